"""Layer 3: the student version of every notebook (solutions stripped) fails every check with its hint, and
nothing else breaks.

`make notebooks` runs each notebook once in its paired form (labkit.grading.paired_version): at every exercise
the student version of its cells runs first and its check must raise with a hint, then the solution runs and
the check must pass. What that run cannot see, the cells after an exercise running with the student's blanks,
is proven here without running them: no later cell reads a name a solution assigns, and solutions change
nothing but those names. One notebook's student version is also run for real, end to end."""

from pathlib import Path

import nbformat
import pytest

from labkit.errors import LabkitError
from labkit.grading import (
    execute,
    exercise_ids,
    expect_check_failure,
    grade_executed,
    paired_version,
    solution_leaks,
    student_version,
)

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_after_an_exercise_never_see_its_solution(path):
    nb = nbformat.read(path, as_version=4)
    assert exercise_ids(nb), "every notebook has exercises"
    assert solution_leaks(nb) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_paired_version_runs_every_exercise_both_ways(path):
    nb = nbformat.read(path, as_version=4)
    paired = paired_version(nb)
    ids = exercise_ids(nb)
    wrapped = [c.source for c in paired.cells if "fails with its hint, as it should" in c.source]
    assert len(wrapped) == len(ids), "each check runs once expecting the student's failure"
    assert exercise_ids(paired) == [i for i in ids for _ in "twice"[:2]], "then once as written, expecting the pass"
    originals = [c.source for c in nb.cells]
    assert [c.source for c in paired.cells if not c.get("id", "").endswith("-student")] == originals
    assert len({c.get("id") for c in paired.cells}) == len(paired.cells), "cell ids stay unique"


def _tiny_notebook(answer_line: str, after: str = 'print("after")'):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from labkit.check import check, exercise\n\n"
                                  "@exercise('tiny.share', hint='embedding parameters / all parameters')\n"
                                  "def _share(vocab, hidden, total):\n    return vocab * hidden / total"),
        nbformat.v4.new_code_cell(f"x = 3\n### BEGIN SOLUTION\n{answer_line}\n### END SOLUTION"),
        nbformat.v4.new_code_cell('check("tiny.share", share, vocab=10, hidden=4,\n'
                                  '      total=80)\nprint(f"{share:.2f}")'),
        nbformat.v4.new_code_cell(after),
    ]
    return nb


def test_paired_run_fails_a_check_that_cannot_fail(tmp_path):
    """The wrapped check raises when the stripped version passes: a check that cannot fail is caught."""
    good = paired_version(_tiny_notebook("share = 10 * 4 / 80"))
    execute(good, cwd=tmp_path, timeout=120)
    report = grade_executed(good)
    assert report.broken_cells == [] and report.passed == ["tiny.share"]
    text = "".join(o.get("text", "") for c in good.cells for o in c.get("outputs", []))
    assert "fails with its hint, as it should" in text and "0.50" in text and "after" in text

    # an "exercise" whose check passes with the placeholder: the paired run must break on it
    always = nbformat.v4.new_notebook()
    always.cells = [nbformat.v4.new_code_cell("def check(ex_id, answer):\n    print('✅')"),
                    nbformat.v4.new_code_cell("### BEGIN SOLUTION\nshare = 1\n### END SOLUTION"),
                    nbformat.v4.new_code_cell('check("x.y", share)')]
    ran = execute(paired_version(always), cwd=tmp_path, timeout=120)
    errors = [o for c in ran.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and "passed with the solution stripped" in errors[0]["evalue"]


def test_solution_leaks_are_found():
    leaky = _tiny_notebook("share = 10 * 4 / 80", after="print(share * 2)")
    assert any("reads 'share'" in p for p in solution_leaks(leaky))
    mutating = _tiny_notebook("share = 0.5\nimport torch\ntorch.manual_seed(0)")
    assert any("changes more than a name" in p for p in solution_leaks(mutating))
    assert solution_leaks(_tiny_notebook("share = 10 * 4 / 80")) == []
    unchecked = _tiny_notebook("share = 0.5")
    unchecked.cells = unchecked.cells[:2]
    with pytest.raises(LabkitError, match="no check"):
        paired_version(unchecked)


def test_expect_check_failure_keeps_what_runs_before_the_check_and_drops_what_follows():
    src = 'n = 2\ncheck("06.speedup", speedup,\n      naive_ms=1, fused_ms=2)\nprint(f"{speedup:.1f}")'
    out = expect_check_failure(src)
    assert out.startswith("n = 2\ntry:\n    check(") and "fused_ms=2)" in out and "print(f" not in out


def test_one_student_version_runs_end_to_end():
    """The real thing for the smallest notebook: its student version runs to the end, every check fails with
    its hint, and no other cell breaks."""
    path = next(p for p in NOTEBOOKS if p.stem == "01_model_families")
    nb = nbformat.read(path, as_version=4)
    report = grade_executed(execute(student_version(nb), cwd=path.parent, timeout=600), path.name)
    assert not report.broken_cells, f"cells broke outside the checks: {report.broken_cells}"
    assert not report.passed, f"checks passed with no answer: {report.passed}"
    assert sorted(report.failed) == sorted(set(exercise_ids(nb))), str(report)
    assert all("Hint:" in message for message in report.failed.values())
