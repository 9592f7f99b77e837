import nbformat
import pytest

from labkit.check import check, exercise, exercises, validator
from labkit.errors import LabkitError
from labkit.grading import exercise_ids, grade_executed, strip_solutions, student_version


@exercise("test.double", hint="Multiply by two.")
def _double(x):
    return 2 * x


@validator("test.positive", hint="Any number above zero.")
def _positive(answer):
    return None if answer > 0 else f"{answer} is not positive"


def test_check_passes_a_right_answer(capsys):
    check("test.double", 8, x=4)
    assert "✅ [test.double]" in capsys.readouterr().out


def test_check_fails_a_wrong_answer_with_the_hint():
    with pytest.raises(AssertionError) as err:
        check("test.double", 9, x=4)
    assert "Multiply by two." in str(err.value) and "test.double" in str(err.value)


def test_check_fails_a_missing_answer_with_the_hint():
    with pytest.raises(AssertionError, match="no answer yet"):
        check("test.double", None, x=4)


def test_validator_messages_reach_the_learner():
    check("test.positive", 3)
    with pytest.raises(AssertionError, match="-1 is not positive"):
        check("test.positive", -1)


def test_unknown_exercise_lists_known_ones():
    with pytest.raises(LabkitError, match="test.double"):
        check("test.nope", 1)


def test_every_registered_exercise_has_a_hint():
    for ex in exercises().values():
        assert len(ex.hint) > 10, ex.id


SOLVED = '''x = 1
### BEGIN SOLUTION
answer = 2 * x
total, count = answer, 1
### END SOLUTION
print(answer)'''


def test_strip_solutions_leaves_placeholders_for_assigned_names():
    stripped = strip_solutions(SOLVED)
    assert "2 * x" not in stripped
    assert "# YOUR CODE HERE" in stripped
    assert "answer = None" in stripped and "total = None" in stripped and "count = None" in stripped
    assert stripped.startswith("x = 1") and stripped.endswith("print(answer)")


def test_strip_solutions_keeps_indentation():
    src = "def f():\n    ### BEGIN SOLUTION\n    y = 3\n    ### END SOLUTION\n    return y"
    assert strip_solutions(src) == "def f():\n    # YOUR CODE HERE\n    y = None\n    return y"


def test_unbalanced_markers_are_refused():
    with pytest.raises(LabkitError, match="unbalanced"):
        strip_solutions("### BEGIN SOLUTION\nx = 1\n")


def _nb(*sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def test_student_version_really_fails_the_check():
    from labkit.grading import execute

    nb = _nb("from labkit import check\nimport tests.test_check_grading",
             "### BEGIN SOLUTION\nanswer = 8\n### END SOLUTION",
             'check("test.double", answer, x=4)')
    assert exercise_ids(nb) == ["test.double"]
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    solved = grade_executed(execute(nb, cwd=root), "solved")
    assert solved.passed == ["test.double"] and not solved.failed and not solved.broken_cells, str(solved)
    student = grade_executed(execute(student_version(nb), cwd=root), "student")
    assert list(student.failed) == ["test.double"] and "Multiply by two." in student.failed["test.double"]
    assert not student.broken_cells, student.broken_cells
    assert os.path.exists(root / "labkit")
