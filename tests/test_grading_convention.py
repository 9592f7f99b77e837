"""labkit.grading.convention: the solution markers and the student version."""

import nbformat
import pytest

from labkit.errors import LabkitError
from labkit.grading import exercise_ids, grade_executed, strip_solutions, student_version

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


def test_student_version_really_fails_the_check(tmp_path):
    from labkit.grading import execute

    nb = _nb("from labkit.check import check, exercise\n\n"
             "@exercise('test.double', hint='Multiply by two.')\ndef _double(x):\n    return 2 * x",
             "### BEGIN SOLUTION\nanswer = 8\n### END SOLUTION",
             'check("test.double", answer, x=4)')
    assert exercise_ids(nb) == ["test.double"]
    solved = grade_executed(execute(nb, cwd=tmp_path), "solved")
    assert solved.passed == ["test.double"] and not solved.failed and not solved.broken_cells, str(solved)
    student = grade_executed(execute(student_version(nb), cwd=tmp_path), "student")
    assert list(student.failed) == ["test.double"] and "Multiply by two." in student.failed["test.double"]
    assert not student.broken_cells, student.broken_cells
