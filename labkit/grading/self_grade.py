"""A learner grades their own notebooks: `labkit grade NOTEBOOK...` runs each one (errors allowed) and reports,
per `check(...)` cell, whether it passed, failed (with the hint) or was never reached; other errors are listed as
broken cells. This trusts the notebook: it is the learner's own. Grading a class is labkit.grading.classrun.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LabkitError
from .convention import CHECK_CALL


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
        ids = CHECK_CALL.findall(cell.source)
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
