"""Grading a class: `labkit grade SUBMISSIONS --master NOTEBOOKS --out REPORT.csv` (see docs/instructors.md).

1. Every entry of SUBMISSIONS is a student to grade or skipped with the reason (labkit.grading.intake).
2. Each (student, master notebook) is one job (labkit.grading.job) in a process of its own, forked from a server
   that has labkit loaded once. The job's whole time, the grader's own steps included, is capped: a job still
   running at its limit is ended with everything it started, and its row says so. Nothing a submission does can
   take another student's row with it.
3. With a sandbox, jobs run concurrently (--jobs, default one per core; each gets cores / jobs threads); without
   one, one at a time.
4. The results (a JSON file) are written first; reports are written from them alone (labkit.grading.report).

A class can be split over machines: `--shard K/N` grades every N-th student starting at the K-th and writes
only its results file; `labkit grade --merge RESULTS.json... --out REPORT.csv` checks that the shards belong to
one class and cover it once, and writes the reports.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import multiprocessing.forkserver
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import LabkitError
from .job import JobSpec, become_subreaper, grade_job
from .report import ClassReport, write_reports
from .results import FORMAT, ClassResult, ExerciseResult, NotebookGrade, SkippedFolder

KILL_SLACK_S = 10.0
MAX_RESULT_BYTES = 50_000_000


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise LabkitError(f"--shard takes K/N with 1 <= K <= N (say 2/4), got {text!r}") from None
    if not 1 <= k <= n:
        raise LabkitError(f"--shard takes K/N with 1 <= K <= N (say 2/4), got {text!r}")
    return k, n


# ----------------------------------------------------------------------------- one job, contained


_CONTEXT = None


def _context():
    """Processes forked from a server that has loaded labkit, its exercises and nbformat once."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _CONTEXT = multiprocessing.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(["labkit.grading.preload"])
        else:  # Windows: each job starts a fresh interpreter (seconds, not milliseconds)
            _CONTEXT = multiprocessing.get_context("spawn")
    return _CONTEXT


def _job_main(spec: JobSpec, writer) -> None:
    become_subreaper()
    try:
        grade = grade_job(spec)
        writer.send_bytes(json.dumps(grade.to_dict()).encode())
    finally:
        writer.close()


def _unfinished(spec: JobSpec, exercises: list[str], why: str) -> NotebookGrade:
    results = [ExerciseResult(e, "failed", f"not graded: {why}; please grade this notebook by hand")
               for e in exercises]
    return NotebookGrade(spec.student, spec.master_path.name, results, notes=[why], seconds=spec.time_limit)


def run_contained(spec: JobSpec, exercises: list[str], job=_job_main, slack: float = KILL_SLACK_S) -> NotebookGrade:
    """Run one job in a process of its own; whatever happens to it, return that student's row."""
    try:
        return _run_contained(spec, exercises, job, slack)
    except Exception as err:  # noqa: BLE001  even starting a process can fail (a machine out of memory)
        return _unfinished(spec, exercises, f"the grader could not run it ({type(err).__name__}: {err})")


def _run_contained(spec: JobSpec, exercises: list[str], job, slack: float) -> NotebookGrade:
    import psutil

    ctx = _context()
    reader, writer = ctx.Pipe(duplex=False)
    process = ctx.Process(target=job, args=(spec, writer), daemon=True)
    started = time.monotonic()
    process.start()
    writer.close()
    data = None
    try:
        if reader.poll(spec.time_limit + slack):
            data = reader.recv_bytes(maxlength=MAX_RESULT_BYTES)
    except (EOFError, OSError):
        data = None
    finally:
        reader.close()
    if process.is_alive():
        try:
            victims = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            victims = []
        process.kill()
        for p in victims:
            try:
                p.kill()
            except psutil.Error:
                pass
    process.join()
    if data is not None:
        try:
            return NotebookGrade.from_dict(json.loads(data))
        except (ValueError, TypeError, KeyError):
            return _unfinished(spec, exercises, "the grader's account of this notebook could not be read")
    if time.monotonic() - started >= spec.time_limit + slack - 0.1:
        return _unfinished(spec, exercises, f"grading it took longer than the {spec.time_limit:.0f} s limit for one "
                                            "notebook (the grader's own steps included), so it was stopped")
    return _unfinished(spec, exercises, f"the grader's process for it ended unexpectedly (exit code {process.exitcode})")


# ----------------------------------------------------------------------------- the class


def _masters(master: Path) -> dict[Path, list[str]]:
    """Each master notebook and the exercises it checks, in order (a bad master is the instructor's error)."""
    import nbformat

    from .rebuild import check_sites

    masters = sorted(master.glob("*.ipynb")) if master.is_dir() else []
    if not masters:
        raise LabkitError(f"{master} holds no .ipynb files; --master takes the folder of master notebooks")
    return {path: [s.exercise_id for s in check_sites(nbformat.read(path, as_version=4))] for path in masters}


def _fingerprint(masters: list[Path], students: list[str]) -> str:
    digest = hashlib.sha256()
    for path in masters:
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    for name in students:
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def _limits_text(cell_timeout: int, notebook_timeout: int, threads: int, jobs: int) -> str:
    return (f"{cell_timeout} s per cell, {notebook_timeout} s per notebook (the grader's own steps included), "
            f"{jobs} notebook(s) at once, {threads} CPU thread(s) per submission")


def grade_class(submissions: str | Path, master: str | Path, out: str | Path, *, jobs: int | None = None,
                cell_timeout: int = 120, notebook_timeout: int = 600, sandbox: str | None = None,
                shard: str | None = None, progress: bool = True) -> ClassReport:
    """Grade every student folder in `submissions` against the notebooks in `master`; write the results and
    (for a whole class) the reports. Returns what was written."""
    from tqdm.auto import tqdm

    from . import sandbox as sandboxes
    from .intake import list_folders

    submissions, master, out = Path(submissions), Path(master), Path(out)
    if out.suffix != ".csv":
        raise LabkitError(f"--out must name a .csv file, got {out}")
    if cell_timeout < 1 or notebook_timeout < 30:
        raise LabkitError("--timeout must be at least 1 s and --notebook-timeout at least 30 s")
    which = parse_shard(shard)
    by_master = _masters(master)
    masters, exercises = list(by_master), [e for ids in by_master.values() for e in ids]
    folders = list_folders(submissions)
    fingerprint = _fingerprint(masters, folders.students)
    students = [s for i, s in enumerate(folders.students) if which is None or i % which[1] == which[0] - 1]
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    if _context().get_start_method() == "forkserver":
        multiprocessing.forkserver.ensure_running()  # the server loads labkit while the sandbox is prepared
    with tempfile.TemporaryDirectory(prefix="labkit-grade-") as tmp:
        root = Path(tmp)
        files = sandboxes.prepare_class_files(root / "class", (submissions, master, out.parent, root))
        chosen = sandboxes.choose(sandbox, files)
        if chosen.kind == "none":  # no read-only mount: this run gets a copy of its own to spoil
            files = sandboxes.private_copy(files)
        jobs = max(1, jobs or cores) if chosen.concurrent else 1
        threads = max(1, cores // jobs)
        specs = [JobSpec(s, submissions / s, m, root / "jobs" / f"{i:05d}-{j:03d}", chosen, files, cell_timeout,
                         float(notebook_timeout), threads)
                 for i, s in enumerate(students) for j, m in enumerate(masters)]
        grades: list[NotebookGrade] = []
        remaining = {s: len(masters) for s in students}
        with tqdm(total=len(students), unit="student", desc="grading", disable=not progress) as bar, \
                ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(run_contained, spec, by_master[spec.master_path]) for spec in specs]
            for spec, future in zip(specs, futures):
                grade = future.result()
                grade.student, grade.notebook = spec.student, spec.master_path.name  # the row is this job's
                grades.append(grade)
                remaining[grade.student] -= 1
                if remaining[grade.student] == 0:
                    bar.update(1)

    from .. import __version__

    result = ClassResult(
        grades=grades, skipped=[SkippedFolder(n, r) for n, r in folders.skipped], exercises=exercises,
        isolation=[chosen.description], limits=_limits_text(cell_timeout, notebook_timeout, threads, jobs),
        seconds=time.monotonic() - started,
        graded_by=f"labkit {__version__} on Python {sys.version.split()[0]}",
        shard=f"{which[0]}/{which[1]}" if which else None, fingerprint=fingerprint)
    if which:
        path = out.parent / f"{out.stem}.shard-{which[0]}-of-{which[1]}.json"
        _write_json(result, path)
        return ClassReport(result, path)
    path = out.with_suffix(".json")
    _write_json(result, path)
    return write_reports(result, out, path)


def _write_json(result: ClassResult, path: Path) -> None:
    temporary = path.with_name(path.name + ".part")
    temporary.write_text(json.dumps(result.to_dict(), ensure_ascii=True, indent=1), encoding="utf-8")
    temporary.replace(path)


def merge_shards(paths: list[str | Path], out: str | Path) -> ClassReport:
    """One class report from the results files of its shards (`--shard K/N` runs)."""
    out = Path(out)
    if out.suffix != ".csv":
        raise LabkitError(f"--out must name a .csv file, got {out}")
    if not paths:
        raise LabkitError("--merge takes the results files of every shard (REPORT.shard-K-of-N.json)")
    parts: list[ClassResult] = []
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            parts.append(ClassResult.from_dict(data))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise LabkitError(f"{path} is not a shard's results file ({type(err).__name__}: {err})") from None
    if len({p.fingerprint for p in parts}) != 1:
        raise LabkitError("these shards graded different classes (different masters or submission folders)")
    labels = [p.shard for p in parts]
    if None in labels:
        raise LabkitError("--merge takes shard results (from --shard K/N), not a whole class's")
    total = {int(label.split("/")[1]) for label in labels}
    if len(total) != 1:
        raise LabkitError(f"these shards split the class differently: {', '.join(sorted(labels))}")
    n = total.pop()
    expected = {f"{k}/{n}" for k in range(1, n + 1)}
    if sorted(labels) != sorted(expected):
        missing = sorted(expected - set(labels))
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        raise LabkitError(f"the shards must cover the class once: missing {missing or 'none'}, "
                          f"repeated {repeated or 'none'}")
    grades = sorted((g for p in parts for g in p.grades), key=lambda g: (g.student, g.notebook))
    skipped = {s.name: s for p in parts for s in p.skipped}
    result = ClassResult(
        grades=grades, skipped=[skipped[k] for k in sorted(skipped)], exercises=parts[0].exercises,
        isolation=list(dict.fromkeys(line for p in parts for line in p.isolation)),
        limits="; ".join(dict.fromkeys(p.limits for p in parts)), seconds=max(p.seconds for p in parts),
        graded_by="; ".join(dict.fromkeys(p.graded_by for p in parts)), shard=None,
        fingerprint=parts[0].fingerprint)
    path = out.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_json(result, path)
    return write_reports(result, out, path, shards=n)
