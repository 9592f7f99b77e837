"""labkit.grading.rebuild: the cells the grader runs, rebuilt from the master; and the suspicious-code scan."""

import copy

import nbformat
import pytest

from labkit.grading.rebuild import match_cells, prepare_submission, suspicious_code


def _master():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from labkit import check\nx = 4", id="setup"),
        nbformat.v4.new_code_cell("# Your turn: twice x.\n### BEGIN SOLUTION\nanswer = 2 * x\n### END SOLUTION",
                                  id="solve"),
        nbformat.v4.new_code_cell('check("test.double", answer, x=x)', id="check"),
        nbformat.v4.new_code_cell('check("test.positive", answer)', id="check2"),
    ]
    return nb


def _sources(prepared):
    return [c.source for c in prepared.cells]


def test_checks_are_restored_by_id_and_tags_dropped():
    sub = _master()
    sub.cells[2].source = 'print("✅ [test.double] correct")'  # edited check
    sub.cells[1].metadata["tags"] = ["raises-exception"]
    sub.cells.insert(2, nbformat.v4.new_code_cell("extra = 1", id="mine"))
    del sub.cells[4]  # check2 deleted
    prepared = prepare_submission(_master(), sub, "/tmp/records.jsonl", "n0nce")
    labels = [c.label for c in prepared.cells]
    assert labels == ["your cell 1", "your cell 2", "your cell 3", "the check cell of test.double",
                      "the check cell of test.positive"]
    assert [s.status for s in prepared.sites] == ["edited", "deleted"]
    assert "__labkit_record(" in prepared.cells[3].source and "n0nce" in prepared.cells[3].source
    assert prepared.cells[3].sites == [0] and prepared.cells[4].sites == [1]
    blank = prepare_submission(_master(), None, "/tmp/r", "n")
    assert "answer = None" in blank.cells[1].source


@pytest.mark.parametrize("ids", ["renumbered", "missing"])
def test_cells_without_the_masters_ids_are_matched_by_content(ids):
    sub = copy.deepcopy(_master())
    sub.cells[1].source = "# Your turn: twice x.\nanswer = x + x  # mine"
    sub.cells.insert(1, nbformat.v4.new_markdown_cell("my notes"))
    for i, cell in enumerate(sub.cells):
        if ids == "renumbered":
            cell["id"] = str(i)
        else:
            cell.pop("id")
    prepared = prepare_submission(_master(), sub, "/tmp/r", "n")
    assert [s.status for s in prepared.sites] == ["intact", "intact"]
    assert any("answer = x + x  # mine" in source for source in _sources(prepared))
    assert not any("answer = None" in s for s in _sources(prepared))  # the student's solution, not a blank
    assert prepared.notes and "matched by their content" in prepared.notes[0]


def test_matching_is_in_order_and_linear():
    master = _master()
    many = nbformat.v4.new_notebook()
    many.cells = [nbformat.v4.new_code_cell("from labkit import check\nx = 4") for _ in range(3000)]
    many.cells.append(nbformat.v4.new_code_cell('check("test.double", answer, x=x)'))
    matched, by_content = match_cells(master.cells, many.cells)
    assert matched == {0: 0, 2: 3000} and by_content == 2


def test_suspicious_code_is_found_however_the_names_are_spelled():
    found = suspicious_code([
        'import sys\nsetattr(sys.modules["lab" + "kit"], "ch" + "eck", print)',
        "labkit.load_config = None",
        "def check(*a):\n    pass",
        "%pip install x\nlabkit.check = print",  # not Python (a magic): the line scan
        "get_ipython().events.register('pre_run_cell', f)",
    ])
    text = " ".join(found)
    for what in ("setattr", "sys.modules", "replaces something inside labkit", "defines its own check",
                 "hooks the notebook's execution"):
        assert what in text, what
    assert suspicious_code(["x = 1\ny = x * 2"]) == []


def test_the_scan_of_a_million_newlines_finishes():
    """The old scan was quadratic (40k newlines: 55 s); this one is one pass per line."""
    assert suspicious_code(["x = 1" + "\n" * 1_000_000 + "check = 2"]) == [
        "the submission reassigns check (no effect on the grade)"]
    assert suspicious_code(["%magic\n" + "\n" * 1_000_000 + "labkit.vram = 1"]) == [
        "the submission replaces something inside labkit (no effect on the grade)"]
