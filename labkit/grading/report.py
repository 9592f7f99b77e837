"""The class reports, written from a ClassResult alone (a whole run, or merged shards).

- REPORT.csv: one row per student x exercise; every cell is one line and cannot start a spreadsheet formula.
- REPORT.xml: JUnit XML, one test suite per student; well-formed whatever a submission printed.
- REPORT.md: the header (isolation, limits, versions, time), the student x exercise table (escaped), the runs
  that stopped early and every folder that was skipped, with the reason.
- REPORT-feedback/: one file per student, named so no two students can share one (labkit.grading.escape).
Text a submission controls is escaped for each format (labkit.grading.escape.display first).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from .escape import csv_cell, file_name, markdown, one_line, xml_text
from .results import ClassResult

ICON = {"passed": "✅", "failed": "❌", "not reached": "⏸", "missing": "∅"}


@dataclass
class ClassReport:
    """A graded class and the files written for it (a shard writes only its results file)."""

    result: ClassResult
    results_path: Path
    csv_path: Path | None = None
    junit_path: Path | None = None
    summary_path: Path | None = None
    feedback_dir: Path | None = None


def write_reports(result: ClassResult, out: Path, results_path: Path, shards: int | None = None) -> ClassReport:
    report = ClassReport(result, results_path, out, out.with_suffix(".xml"), out.with_suffix(".md"),
                         out.parent / f"{out.stem}-feedback")
    write_csv(result, report.csv_path)
    write_junit(result, report.junit_path)
    names = write_feedback(result, report.feedback_dir)
    write_summary(result, report, names, shards)
    return report


def _rows(result: ClassResult):
    for g in result.grades:
        for r in g.results:
            yield g, r


def write_csv(result: ClassResult, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "notebook", "exercise", "status", "points", "max_points", "message", "slip",
                         "hint", "notes", "graded_file"])
        for g, r in _rows(result):
            notes = "; ".join([*r.notes, *g.notes, *([f"run stopped early: {g.run_problem}"] if g.run_problem else [])])
            writer.writerow([csv_cell(g.student), csv_cell(g.notebook), csv_cell(r.exercise_id), r.status, r.points, 1,
                             csv_cell(r.message, 2000), csv_cell(r.slip or ""), csv_cell(one_line(r.hint)),
                             csv_cell(notes, 4000), csv_cell(g.graded_file or "")])


def write_junit(result: ClassResult, path: Path) -> None:
    suites = ElementTree.Element("testsuites", name="labkit grade", time=f"{result.seconds:.1f}")
    for student, (got, total) in result.scores().items():
        grades = [g for g in result.grades if g.student == student]
        suite = ElementTree.SubElement(suites, "testsuite", name=xml_text(student), tests=str(total),
                                       failures=str(total - got), time=f"{sum(g.seconds for g in grades):.1f}")
        props = ElementTree.SubElement(suite, "properties")
        for line in result.isolation:
            ElementTree.SubElement(props, "property", name="isolation", value=xml_text(line))
        for g in grades:
            for r in g.results:
                case = ElementTree.SubElement(suite, "testcase", name=xml_text(r.exercise_id),
                                              classname=xml_text(f"{student}.{Path(g.notebook).stem}"))
                if r.status != "passed":
                    failure = ElementTree.SubElement(case, "failure", type=r.status, message=xml_text(r.message, 500))
                    failure.text = xml_text(r.message, 2000) + "\nHint: " + xml_text(one_line(r.hint))
    ElementTree.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def feedback_names(students: list[str]) -> dict[str, str]:
    """student -> feedback file name, unique even if two hashes ever met."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for student in students:
        name = file_name(student)
        while name in taken:
            name = name[:-3] + "-x.md"
        names[student] = name
        taken.add(name)
    return names


def write_feedback(result: ClassResult, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = feedback_names(result.students())
    for student, (got, total) in result.scores().items():
        lines = [f"# Feedback for {markdown(student)}: {got}/{total} exercises passed", ""]
        for g in (g for g in result.grades if g.student == student):
            lines.append(f"## {markdown(g.notebook)}")
            if g.graded_file:
                lines.append(f"- Graded file: {markdown(g.graded_file)}")
            if g.run_problem:
                lines.append(f"- The run stopped early: {markdown(g.run_problem)}. Exercises after that point "
                             "were not reached.")
            lines += [f"- A cell raised an error: {markdown(b, 500)}" for b in g.broken_cells[:10]]
            lines += [f"- Note: {markdown(n, 1000)}" for n in g.notes[:20]]
            for r in g.results:
                message = f". {markdown(r.message, 1000)}" if r.message and r.status != "passed" else ""
                lines.append(f"- {ICON[r.status]} **{markdown(r.exercise_id)}**: {r.status}{message}")
                if r.status in ("failed", "not reached") and r.hint:
                    lines.append(f"  - Hint: {markdown(one_line(r.hint))}")
                lines += [f"  - Note: {markdown(n, 500)}" for n in r.notes[:5]]
            lines.append("")
        (folder / names[student]).write_text("\n".join(lines), encoding="utf-8")
    return names


def write_summary(result: ClassResult, report, names: dict[str, str], shards: int | None = None) -> None:
    header = [f"# Grading report ({time.strftime('%Y-%m-%d %H:%M %Z')})", ""]
    header += [f"- Isolation: {line}." for line in result.isolation]
    header += [
        f"- Limits: {result.limits}.",
        f"- Graded by {result.graded_by}, in {result.seconds:.0f} s"
        + (f" (the longest of {shards} shards)" if shards else "") + ".",
        f"- Files: {report.csv_path.name} (one row per student x exercise), {report.junit_path.name} (JUnit), "
        f"{report.results_path.name} (everything, for merging), {report.feedback_dir.name}/ (one file per student).",
        "",
    ]
    exercises = result.exercises or list(dict.fromkeys(r.exercise_id for _, r in _rows(result)))
    table = result.table()
    lines = ["| student | score | " + " | ".join(exercises) + " | feedback |",
             "|---|---|" + "---|" * len(exercises) + "---|"]
    for student, (got, total) in result.scores().items():
        cells = [ICON[table[student][e]] if e in table[student] else "" for e in exercises]
        lines.append(f"| {markdown(student)} | {got}/{total} | " + " | ".join(cells) + f" | {names[student]} |")
    stopped = [f"- {markdown(g.student)} / {markdown(g.notebook)}: {markdown(g.run_problem)}"
               for g in result.grades if g.run_problem]
    text = header + lines
    if stopped:
        text += ["", "Runs that stopped early:", *stopped]
    if result.skipped:
        text += ["", "Not graded (every entry of the submissions folder is either graded or listed here):"]
        text += [f"- {markdown(s.name)}: {markdown(s.reason)}" for s in result.skipped]
    report.summary_path.write_text("\n".join(text) + "\n", encoding="utf-8")


def summary_text(report) -> str:
    return report.summary_path.read_text(encoding="utf-8")


