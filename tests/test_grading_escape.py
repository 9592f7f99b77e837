"""labkit.grading.escape: whatever a student names a folder or prints, each report format stays intact."""

import csv
import io
from xml.etree import ElementTree

from hypothesis import given
from hypothesis import strategies as st

from labkit.grading.escape import csv_cell, display, file_name, markdown, xml_text

HOSTILE = ["x|y", "=HYPERLINK(\"http://evil\")", "+1", "-2", "@SUM(A1)", "\tx", "a\nb", "a\r\nb", "\x1b[2Jred",
           "\u202eevil", "\x00nul", "back\\slash", "✅ passed", "<b>html</b> & ]]>", "x\udcff", "\u2028line"]
texts = st.text(alphabet=st.characters(codec=None), max_size=60) | st.sampled_from(HOSTILE)


@given(texts)
def test_display_is_one_printable_line(text):
    shown = display(text)
    assert shown.isprintable() and "\n" not in shown and "\r" not in shown


@given(texts, texts)
def test_display_never_shows_two_names_alike(a, b):
    assert (display(a) == display(b)) == (a == b)


@given(texts)
def test_a_csv_cell_never_starts_a_formula_and_reads_back_as_one_line(text):
    cell = csv_cell(text)
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    out = io.StringIO()
    csv.writer(out).writerow([cell, "next"])
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [[cell, "next"]]


@given(texts)
def test_markdown_cannot_break_a_table_row_or_start_markup(text):
    cell = markdown(text)
    row = f"| {cell} | 1/4 |"
    unescaped_pipes = sum(1 for i, c in enumerate(row) if c == "|" and (i == 0 or row[i - 1] != "\\"))
    assert unescaped_pipes == 3 and "\n" not in row
    for mark in "<>[]`*_":
        assert all(cell[i - 1] == "\\" for i, c in enumerate(cell) if c == mark and i > 0) and not cell.startswith(mark)


@given(texts)
def test_xml_text_is_always_well_formed(text):
    element = ElementTree.Element("failure", message=xml_text(text))
    element.text = xml_text(text)
    parsed = ElementTree.fromstring(ElementTree.tostring(element, encoding="unicode"))
    assert parsed.get("message") == xml_text(text)


def test_feedback_file_names_cannot_collide():
    names = ["x y", "x_y", "x\ty", "x\u200by", ".hidden", "hidden", "../../etc/passwd", "a" * 300, "x\udcff"]
    files = [file_name(n) for n in names]
    assert len(set(files)) == len(files)
    for f in files:
        assert "/" not in f and not f.startswith(".") and f.endswith(".md") and len(f) < 80 and f.isascii()
