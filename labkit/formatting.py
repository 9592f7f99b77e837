"""How labkit writes numbers and tables: the byte units every module shares, and one table renderer.

Binary units (GiB, MiB) are what memory is allocated and reported in (torch, nvidia-smi, the
estimates); decimal ones (GB) are what vendors print on the box and what prices are quoted per.

`table(rows, fmt)` writes a list of dicts as aligned text (for print), Markdown (for
IPython.display.Markdown) or HTML (for a widget, or `show_table` in a notebook).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

from .errors import unknown

KIB = 1024
MIB = 1024**2
GIB = 1024**3
GB = 1e9

TABLE_FORMATS = ("text", "markdown", "html")


def readable_float(value: float) -> str:
    """A float at a precision worth reading: 1,234 / 12.3 / 0.0123 / 0.000123."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) >= 0.01 else f"{value:.6f}"


def table(rows: Sequence[dict], fmt: str = "text", columns: Sequence[str] | None = None,
          floats: str | Callable[[float], str] | None = None) -> str:
    """`rows` (one dict per row) as a table in `fmt`: "text" (numbers right-aligned, the rest left),
    "markdown" or "html". `columns`: the keys to show, in order (default: the first row's); a row
    without one shows it empty. `floats`: how floats are written, a format spec (".3g") or a function
    (`readable_float`); default str()."""
    if fmt not in TABLE_FORMATS:
        raise unknown("table format", fmt, TABLE_FORMATS)
    if not rows:
        return "<p>(no rows)</p>" if fmt == "html" else "(no rows)"
    columns = list(columns or rows[0])

    def cell(value: Any) -> str:
        if isinstance(value, float) and floats is not None:
            return floats(value) if callable(floats) else format(value, floats)
        return str(value)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    if fmt == "html":
        head = "".join(f"<th style='text-align:left'>{html.escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(v)}</td>" for v in row) + "</tr>"
                       for row in cells)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if fmt == "markdown":
        line = lambda values: "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"  # noqa: E731
        return "\n".join([line([str(c) for c in columns]), "|" + "---|" * len(columns), *(line(row) for row in cells)])
    numeric = [[isinstance(r.get(c), (int, float)) for c in columns] for r in rows]
    width = [max(len(str(c)), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    header = "  ".join(str(c).ljust(w) for c, w in zip(columns, width))
    lines = ["  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(row, width, nums))
             for row, nums in zip(cells, numeric)]
    return "\n".join([header, *lines])


def show_table(rows: Sequence[dict], columns: Sequence[str] | None = None):
    """Display rows as an HTML table in a notebook (returns the IPython HTML object)."""
    from IPython.display import HTML  # here, not at the top: IPython comes with the [lab] extra only

    return HTML(table(rows, "html", columns))
