"""labkit.grading.report: the four reports stay valid and one row per student, whatever the students wrote."""

import csv
from pathlib import Path
from xml.etree import ElementTree

from labkit.grading.report import write_reports
from labkit.grading.results import ClassResult, ExerciseResult, NotebookGrade, SkippedFolder

NAMES = ["x y", "x_y", "pipe|name", '=HYPERLINK("http://evil")', "new\nline", "ctrl\x1b[31mred", ".dotted",
         "bidi\u202eevil", "bytes\udcff"]
FORGED = "\n- ✅ **ex.b**: passed\r\n✅ [ex.b] correct\x1b[2J\x00 ]]></failure><x/> | = |"


def _result() -> ClassResult:
    grades = []
    for i, name in enumerate(NAMES):
        results = [ExerciseResult("ex.a", "passed" if i % 2 else "failed", f"got {FORGED!r}", "the hint"),
                   ExerciseResult("ex.b", "failed", f"your answer could not be read: ValueError: {FORGED}", "hint",
                                  notes=[FORGED])]
        grades.append(NotebookGrade(name, "nb.ipynb", results, run_problem=FORGED if i == 3 else None,
                                    broken_cells=[f"your cell 2: RuntimeError: {FORGED}"], notes=[FORGED],
                                    graded_file=f"sub/{name}.ipynb"))
    return ClassResult(grades, [SkippedFolder("link|=1+1", "a symbolic link")], ["ex.a", "ex.b"],
                       ["a sandbox of its own"], "limits", 1.0, "labkit test")


def test_reports_stay_valid_and_say_nothing_a_student_forged(tmp_path):
    result = _result()
    out = tmp_path / "report.csv"
    report = write_reports(result, out, tmp_path / "report.json")

    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 1 + 2 * len(NAMES) and all(len(r) == len(rows[0]) for r in rows)
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
    assert not any("\n" in cell or "\r" in cell for row in rows for cell in row)

    suites = ElementTree.parse(report.junit_path).getroot()  # well-formed despite ]]>, NUL and escapes
    assert [s.get("name") for s in suites] and len(suites) == len(NAMES)

    table = [line for line in report.summary_path.read_text().splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(NAMES)
    for line in table:
        assert sum(1 for i, c in enumerate(line) if c == "|" and line[i - 1] != "\\") == 2 + 2 + 1 + 1
    assert "link\\|=1+1: a symbolic link" in report.summary_path.read_text()

    files = sorted(Path(report.feedback_dir).iterdir())
    assert len(files) == len(NAMES)  # x y and x_y do not overwrite each other
    for path in files:
        lines = path.read_text().splitlines()
        passed = int(lines[0].rsplit(": ", 1)[1].split("/")[0])  # "# Feedback for NAME: 1/2 exercises passed"
        ticks = [line for line in lines if line.lstrip().startswith(("- ✅", "✅"))]
        assert len(ticks) == passed, lines  # no forged "✅ passed" line
        assert not any(c in path.read_text() for c in "\x1b\x00\u202e\r")
    assert len({p.read_text().splitlines()[0] for p in files}) == len(NAMES)
