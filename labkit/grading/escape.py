"""Text a student controls (folder names, answers, error messages), made safe for each report format.

Everything a submission can influence goes through `display` before it reaches a report: one line, printable,
and injective (two different names never display the same), so a name or a message can neither break a table
nor forge a line. Then each format adds its own escaping: `markdown`, `csv_cell` (no formula injection) and
`xml_text` (well-formed whatever the input). `file_name` gives each student a feedback file name no other
student's name can produce.
"""

from __future__ import annotations

import hashlib
import re

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&#!])")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")  # fullwidth too


def _escaped(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def display(text: object, limit: int | None = None) -> str:
    """`text` as one printable line: backslashes doubled, control, format (bidi overrides, zero-width) and
    separator characters and lone surrogates shown as escapes. Injective when `limit` is None."""
    text = str(text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"  # one linear pass below, whatever the input size
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char.isprintable():  # Python's printable: no control, format, separator (but space) or surrogate
            out.append(char)
        else:
            out.append(_escaped(char))
    return "".join(out)


def one_line(text: object, limit: int | None = None) -> str:
    """Trusted text (labkit's hints) on one line: runs of whitespace become one space."""
    return display(" ".join(str(text).split()), limit)


def markdown(text: object, limit: int | None = None) -> str:
    """Safe inside a Markdown list item or table cell (never at a line's start): the marks that open emphasis,
    code, links, images, HTML, entities or a table cell are backslash-escaped (CommonMark allows escaping any
    ASCII punctuation; GFM tables honour `\\|`)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", display(text, limit))


def csv_cell(text: object, limit: int | None = None) -> str:
    """Safe in a spreadsheet: one line, and a leading character that would start a formula is quoted."""
    value = display(text, limit)
    return "'" + value if value.startswith(_FORMULA_START) else value


def xml_text(text: object, limit: int | None = None) -> str:
    """Only characters XML 1.0 allows (display() already escaped control characters and lone surrogates);
    ElementTree escapes &, < and > itself."""
    return display(text, limit)


def file_name(name: str, suffix: str = ".md") -> str:
    """A file name for a student's folder name: a readable ASCII part plus a hash of the exact name, so no two
    names (say `x y` and `x_y`, or names that differ by an invisible character) can share a file."""
    readable = re.sub(r"[^A-Za-z0-9]+", "_", name.encode("utf-8", "surrogateescape").decode("ascii", "ignore"))
    readable = readable.strip("_")[:40] or "student"
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{readable}-{digest}{suffix}"
