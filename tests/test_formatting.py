"""labkit.formatting: the units, and one table renderer in its three formats."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labkit import formatting as F
from labkit.errors import LabkitError

ROWS = [{"model": "llama-3.1-8b", "GiB": 14.96, "layers": 32}, {"model": "a|b", "GiB": 0.5, "layers": 2}]


def test_units():
    assert (F.KIB, F.MIB, F.GIB, F.GB) == (2**10, 2**20, 2**30, 10**9)


def test_text_table_aligns_numbers_right_and_text_left():
    lines = F.table(ROWS).splitlines()
    assert lines[0].split() == ["model", "GiB", "layers"]
    assert lines[1] == "llama-3.1-8b  14.96      32"
    assert lines[2] == "a|b             0.5       2"
    assert len({len(line.rstrip()) for line in lines[1:]}) == 1


def test_markdown_table_escapes_pipes_and_formats_floats():
    text = F.table(ROWS, "markdown", floats=".1f")
    assert text.splitlines() == ["| model | GiB | layers |", "|---|---|---|", "| llama-3.1-8b | 15.0 | 32 |",
                                 "| a\\|b | 0.5 | 2 |"]
    assert "| 1,235 |" in F.table([{"x": 1234.6}], "markdown", floats=F.readable_float)


def test_html_table_escapes_and_picks_columns():
    page = F.table([{"a": "<b>", "b": 1}], "html", columns=["b", "a", "missing"])
    assert page.startswith("<table><thead><tr><th style='text-align:left'>b</th>")
    assert "&lt;b&gt;" in page and "<b>" not in page.replace("<tbody>", "")
    assert page.count("<td") == 3  # the missing column is shown empty


def test_empty_rows_and_unknown_formats():
    assert F.table([]) == F.table([], "markdown") == "(no rows)"
    assert F.table([], "html") == "<p>(no rows)</p>"
    with pytest.raises(LabkitError, match="unknown table format 'latex'.*markdown"):
        F.table(ROWS, "latex")


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12))
def test_readable_float_keeps_three_significant_digits_or_all_integer_digits(x):
    text = F.readable_float(x)
    if abs(x) >= 100:
        assert float(text.replace(",", "")) == pytest.approx(x, abs=0.5)
    elif abs(x) >= 0.01:
        assert float(text) == pytest.approx(x, rel=0.01)
    else:
        assert float(text) == pytest.approx(x, abs=1e-6)
