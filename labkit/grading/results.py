"""What grading a class produces: plain data, written as JSON between the grader's processes and shards.

ExerciseResult (one exercise of one submission) < NotebookGrade (one student, one master notebook) < ClassResult
(every student, the folders skipped and why, how submissions were isolated). Reports (labkit.grading.report)
are written from a ClassResult alone, so shards graded on different machines merge into one report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

FORMAT = "labkit-grade-results/1"
STATUSES = ("passed", "failed", "not reached", "missing")


@dataclass
class ExerciseResult:
    """How one exercise of one submission was graded."""

    exercise_id: str
    status: str  # one of STATUSES
    message: str = ""
    hint: str = ""
    slip: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def points(self) -> int:
        return int(self.status == "passed")


@dataclass
class NotebookGrade:
    """One student's grade on one master notebook."""

    student: str  # the folder's exact name (reports escape it)
    notebook: str
    results: list[ExerciseResult]
    run_problem: str | None = None  # why the run stopped early: a cell's time limit, a dead kernel, ...
    broken_cells: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    graded_file: str | None = None  # the file graded, relative to the student's folder

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NotebookGrade:
        results = [ExerciseResult(**r) for r in data["results"]]
        return cls(**{**data, "results": results})


@dataclass
class SkippedFolder:
    """An entry of the submissions folder that was not graded, and why."""

    name: str
    reason: str


@dataclass
class ClassResult:
    """Everything the reports are written from."""

    grades: list[NotebookGrade]
    skipped: list[SkippedFolder]
    exercises: list[str]  # every exercise of the masters, in order
    isolation: list[str]  # how submissions ran (one line per shard that differs)
    limits: str
    seconds: float
    graded_by: str
    shard: str | None = None  # "K/N" for one shard; None for a whole class
    fingerprint: str = ""  # masters + folder listing: shards of one class share it

    def students(self) -> list[str]:
        return list(dict.fromkeys(g.student for g in self.grades))

    def scores(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for g in self.grades:
            got, total = out.get(g.student, (0, 0))
            out[g.student] = (got + sum(r.points for r in g.results), total + len(g.results))
        return out

    def table(self) -> dict[str, dict[str, str]]:
        """student -> exercise -> status: what the instructor sees first."""
        out: dict[str, dict[str, str]] = {}
        for g in self.grades:
            for r in g.results:
                out.setdefault(g.student, {})[r.exercise_id] = r.status
        return out

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> ClassResult:
        data = {k: v for k, v in data.items() if k != "format"}
        return cls(**{**data, "grades": [NotebookGrade.from_dict(g) for g in data["grades"]],
                      "skipped": [SkippedFolder(**s) for s in data["skipped"]]})
