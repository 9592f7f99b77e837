"""Student versions and grading for the exercise convention (see notebooks/README.md).

- `student_version(nb)`: each `### BEGIN SOLUTION ... ### END SOLUTION` block becomes
  `# YOUR CODE HERE` plus `name = None` for every variable the solution assigned.
- `grade(path)`: execute a notebook (errors allowed) and report, per `check(...)` cell, whether
  it passed, failed (with the hint) or was never reached; other errors are reported as broken cells.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LabkitError

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([\w.\-]+)["']""")
_BLOCK = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[^\n]*\n(.*?)^[ \t]*{re.escape(END)}[^\n]*$", re.M | re.S)


def _assigned_names(code: str) -> list[str]:
    """Top-level names a solution assigns (in order), so the student version can set them to None."""
    try:
        tree = ast.parse(_dedent(code))
    except SyntaxError as err:
        raise LabkitError(f"a solution block is not valid Python: {err}") from err
    names: list[str] = []
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name) and n.id not in names:
                    names.append(n.id)
    return names


def _dedent(code: str) -> str:
    import textwrap

    return textwrap.dedent(code)


def strip_solutions(source: str) -> str:
    """The cell source with every solution block replaced by a placeholder."""
    def replace(match: re.Match) -> str:
        indent, body = match.group(1), match.group(2)
        lines = [f"{indent}# YOUR CODE HERE"] + [f"{indent}{name} = None" for name in _assigned_names(body)]
        return "\n".join(lines)

    if source.count(BEGIN) != source.count(END):
        raise LabkitError(f"unbalanced solution markers: every '{BEGIN}' needs an '{END}'")
    return _BLOCK.sub(replace, source)


def student_version(nb):
    """A copy of a notebook (nbformat node) with solutions stripped and outputs cleared."""
    import copy

    student = copy.deepcopy(nb)
    for cell in student.cells:
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs, cell.execution_count = [], None
    return student


def exercise_ids(nb) -> list[str]:
    """The exercise ids checked in a notebook, in order."""
    return [m for cell in nb.cells if cell.cell_type == "code" for m in _CHECK_CALL.findall(cell.source)]


@dataclass
class GradeReport:
    notebook: str
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # id -> message (with hint)
    not_reached: list[str] = field(default_factory=list)
    broken_cells: list[str] = field(default_factory=list)  # errors outside check cells

    @property
    def score(self) -> str:
        total = len(self.passed) + len(self.failed) + len(self.not_reached)
        return f"{len(self.passed)}/{total}"

    def __str__(self) -> str:
        lines = [f"{self.notebook}: {self.score} exercises passed"]
        lines += [f"  ✅ {i}" for i in self.passed]
        lines += [f"  ❌ {i}: {msg.splitlines()[-1] if msg else ''}" for i, msg in self.failed.items()]
        lines += [f"  ⏸  {i}: not reached" for i in self.not_reached]
        lines += [f"  💥 {b}" for b in self.broken_cells]
        return "\n".join(lines)


def grade_executed(nb, name: str = "notebook") -> GradeReport:
    """Read the outputs of an executed notebook into a GradeReport."""
    report = GradeReport(name)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        ids = _CHECK_CALL.findall(cell.source)
        error = next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"), None)
        executed = cell.get("execution_count") is not None
        if ids:
            for ex_id in ids:
                text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
                if f"✅ [{ex_id}]" in text:
                    report.passed.append(ex_id)
                elif error is not None and error.get("ename") == "AssertionError":
                    report.failed[ex_id] = error.get("evalue", "")
                elif error is not None:
                    report.failed[ex_id] = f"{error.get('ename')}: {error.get('evalue')}"
                    report.broken_cells.append(f"cell {index}: {error.get('ename')}: {error.get('evalue')}")
                else:
                    report.not_reached.append(ex_id) if not executed else report.failed.setdefault(ex_id, "no result")
        elif error is not None:
            report.broken_cells.append(f"cell {index}: {error.get('ename')}: {error.get('evalue')}")
    return report


def execute(nb, cwd: str | Path, timeout: int = 600, kernel_name: str = "python3"):
    """Run every cell (errors allowed, so one failing check does not hide the rest)."""
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def grade(path: str | Path, timeout: int = 600) -> GradeReport:
    """Execute a submitted notebook and grade its checks."""
    import nbformat

    path = Path(path)
    if path.suffix != ".ipynb" or not path.is_file():
        raise LabkitError(f"{path} is not a notebook file; grade takes .ipynb files")
    nb = nbformat.read(path, as_version=4)
    execute(nb, cwd=path.parent, timeout=timeout)
    return grade_executed(nb, path.name)
