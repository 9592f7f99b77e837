"""Layer 3: the student version of every notebook (solutions stripped) runs to the end, and every
check in it fails with its hint while nothing else breaks. This proves each check can fail."""

from pathlib import Path

import nbformat
import pytest

from labkit.grading import execute, exercise_ids, grade_executed, student_version

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_version_fails_only_its_checks(path):
    nb = nbformat.read(path, as_version=4)
    ids = exercise_ids(nb)
    assert ids, "every notebook has exercises"
    report = grade_executed(execute(student_version(nb), cwd=path.parent, timeout=600), path.name)
    assert not report.broken_cells, f"cells broke outside the checks: {report.broken_cells}"
    assert not report.passed, f"checks passed with no answer: {report.passed}"
    assert sorted(report.failed) == sorted(set(ids)), str(report)
    for ex_id, message in report.failed.items():
        assert "Hint:" in message, f"{ex_id} failed without its hint: {message}"
