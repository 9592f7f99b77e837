"""One student's grade on one master notebook, every step in order (data goes one way):

    intake (find and read the copy) -> rebuild (the cells to run) -> run (the runner, in the sandbox)
    -> records (the answers it wrote) -> decide (pass or fail, here) -> a NotebookGrade

`grade_job` runs in a process of its own (labkit.grading.classrun), which the class run ends when the
student's time is up, so a hang or a crash anywhere here, the grader's own steps included, costs that student's
row its result and nothing else. It never raises.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .decide import RunFacts, decide, trusted_namespace
from .escape import display
from .rebuild import check_sites, prepare_submission, suspicious_code
from .records import MAX_RECORDS_BYTES, parse_records
from .results import ExerciseResult, NotebookGrade
from .runner import RESULT_MARK
from .sandbox import ClassFiles, Sandbox, command, environment, job_paths, launch

MAX_RUNNER_OUTPUT = 16_000_000
BIG_OUTPUT_BYTES = 20_000_000
GRADER_RESERVE_S = 10.0  # of a student's time, kept for the grader's steps after the run


@dataclass(frozen=True)
class JobSpec:
    student: str
    student_dir: Path
    master_path: Path
    job_dir: Path  # private to the grader; the run's own files live here when there is no sandbox
    sandbox: Sandbox
    files: ClassFiles
    cell_timeout: int
    time_limit: float  # for everything about this notebook, the grader's steps included
    threads: int


def _blank(sites, status: str, message: str) -> list[ExerciseResult]:
    return [ExerciseResult(s.exercise_id, status, message) for s in sites]


def _read_capped(stream, sink: list[bytes], limit: int) -> None:
    size = 0
    while True:
        chunk = stream.read(1 << 16)
        if not chunk:
            return
        if size < limit:
            sink.append(chunk[:limit - size])
        size += len(chunk)


def _send(stream, data: bytes) -> None:
    try:
        stream.write(data)
        stream.close()
    except OSError:  # the runner ended before reading its job: its output says why
        pass


def run_in_sandbox(spec: JobSpec, cells: list[str], nonce: str, seconds: float) -> tuple[dict | None, str]:
    """The runner's result for these cells (None when it gave none), and the tail of its error output."""
    import json

    paths = job_paths(spec.sandbox, spec.job_dir)
    env = environment(spec.sandbox, spec.files, paths, spec.threads)
    job = {"cells": cells, "cell_timeout": spec.cell_timeout, "time_limit": max(1.0, seconds - 2),
           "home": paths.home, "cwd": paths.cwd, "records": paths.records, "events": paths.events,
           "max_records_bytes": MAX_RECORDS_BYTES, "nonce": nonce}
    spec.job_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cwd = spec.job_dir if spec.sandbox.kind != "bwrap" else spec.files.root
    process = launch(command(spec.sandbox, spec.files, env), cwd=cwd, env=env, stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=_read_capped, args=(process.stdout, out, MAX_RUNNER_OUTPUT), daemon=True),
               threading.Thread(target=_read_capped, args=(process.stderr, err, 200_000), daemon=True)]
    readers.append(threading.Thread(target=_send, args=(process.stdin, json.dumps(job).encode()), daemon=True))
    for r in readers:
        r.start()
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass
    kill_tree(process.pid)
    kill_descendants()  # with no sandbox: whatever the submission left running
    process.wait()
    for r in readers:
        r.join(timeout=5)
    for stream in (process.stdout, process.stderr):
        stream.close()
    text = b"".join(out).decode("utf-8", "replace")
    tail = b"".join(err).decode("utf-8", "replace")[-2000:]
    position = text.rfind("\n" + RESULT_MARK)
    if position < 0:
        return None, tail
    line = text[position + 1 + len(RESULT_MARK):].split("\n", 1)[0]
    from .safe_io import Refused, loads_bounded

    try:
        result = loads_bounded(line)
    except Refused:
        return None, tail
    return (result if isinstance(result, dict) else None), tail


def kill_tree(pid: int) -> None:
    """End a process and every process below it (with no sandbox, a submission's leftovers too: the job is their
    subreaper, so even a process that double-forked stays below it)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        victims = [*parent.children(recursive=True), parent]
    except psutil.Error:
        victims = []
    for p in victims:
        try:
            p.kill()
        except psutil.Error:
            pass


def kill_descendants() -> None:
    """End every process below this one (the job's runner and, as their subreaper, anything they left)."""
    import psutil

    try:
        for p in psutil.Process().children(recursive=True):
            try:
                p.kill()
            except psutil.Error:
                pass
    except psutil.Error:
        pass


def become_subreaper() -> None:
    """Orphans of this process's descendants are re-parented to it, not to init (Linux), so none escapes."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _facts(result: dict, cells, stopped: str | None) -> tuple[RunFacts, list[str], list[str]]:
    """What the runner's account says: the sites that completed, errors by cell, notes."""
    import json

    facts = RunFacts(stopped=stopped)
    broken, notes = [], []
    entries = result.get("cells") if isinstance(result.get("cells"), list) else []
    for entry in entries[:len(cells)]:
        if not isinstance(entry, dict) or not isinstance(entry.get("index"), int):
            continue
        index = entry["index"]
        if not 0 <= index < len(cells):
            continue
        if entry.get("completed") is True:
            facts.completed_sites.update(cells[index].sites)
        error = entry.get("error")
        if isinstance(error, list) and len(error) == 2 and len(broken) < 20 and not cells[index].sites:
            broken.append(f"{cells[index].label}: {display(error[0], 100)}: {display(error[1], 300)}")
    output = result.get("output_bytes")
    if isinstance(output, int) and output > BIG_OUTPUT_BYTES:
        notes.append(f"the notebook printed {output / 1e6:.0f} MB of output (counted, not kept)")
    for key in ("records_problem", "events_problem"):
        if isinstance(result.get(key), str) and result[key]:
            notes.append(display(result[key], 300))
    events = result.get("events") if isinstance(result.get("events"), str) else ""
    for line in events.splitlines()[:1000]:
        try:
            event = json.loads(line) if len(line) < 1000 else None
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "expected-answer" and isinstance(event.get("exercise"), str):
            facts.refused[event["exercise"]] = facts.refused.get(event["exercise"], 0) + 1
    return facts, broken, notes


def grade_job(spec: JobSpec) -> NotebookGrade:
    """Grade one student's copy of one master notebook. Never raises."""
    import warnings

    import nbformat

    from .intake import find_copies, read_notebook
    from .safe_io import Refused

    warnings.simplefilter("ignore")
    started = time.monotonic()
    name = spec.master_path.name
    master = nbformat.read(spec.master_path, as_version=4)
    sites = check_sites(master)
    grade = NotebookGrade(spec.student, name, [])
    try:
        choice = find_copies(spec.student_dir, name)
        grade.notes += choice.notes
        grade.graded_file = choice.relative
        if choice.path is None and choice.refused is None:
            grade.results = _blank(sites, "missing", f"{name} was not handed in")
            return grade
        submission = None
        if choice.refused:
            why = choice.refused
        else:
            try:
                submission, notes = read_notebook(choice.path)
                grade.notes += notes
                why = None
            except Refused as refusal:
                why = f"{display(choice.relative, 200)} {refusal} (refused)"
        if why:
            grade.results = _blank(sites, "failed", f"not graded: {why}")
            return grade

        nonce = secrets.token_hex(16)
        paths = job_paths(spec.sandbox, spec.job_dir)
        prepared = prepare_submission(master, submission, paths.records, nonce)
        if not grade.notes:  # a converted notebook's note already says its cells were matched by content
            grade.notes += prepared.notes
        grade.notes += suspicious_code([c.source for c in submission.cells if c.cell_type == "code"])
        seconds = spec.time_limit - (time.monotonic() - started) - GRADER_RESERVE_S
        if seconds < 5:
            grade.results = _blank(sites, "not reached", "not reached: no time was left to run the notebook")
            return grade
        result, tail = run_in_sandbox(spec, [c.source for c in prepared.cells], nonce, seconds)
        if result is None:
            stopped = "the run ended without an account of it (the notebook ended the grader's runner)"
            if tail.strip() and "Traceback" not in tail:
                stopped += f": {display(tail.strip().splitlines()[-1], 200)}"
            result = {}
        else:
            stopped = display(result["stopped"], 300) if isinstance(result.get("stopped"), str) else None
        facts, grade.broken_cells, notes = _facts(result, prepared.cells, stopped)
        grade.notes += notes
        grade.run_problem = stopped
        records, notes = parse_records(result.get("records") if isinstance(result.get("records"), str) else "", nonce)
        grade.notes += notes
        grade.results = decide(prepared.sites, records, _namespace(spec.master_path, master), facts)
    except Exception as err:  # noqa: BLE001  the grader's own failure on this input: this row says so
        grade.results = _blank(sites, "failed", f"the grader failed on this submission ({type(err).__name__}: "
                                                f"{display(err, 200)}); please grade it by hand")
        grade.notes.append("the grader failed on this submission; see the message")
    finally:
        shutil.rmtree(spec.job_dir, ignore_errors=True)
        grade.seconds = time.monotonic() - started
    return grade


_NAMESPACES: dict[str, dict] = {}


def _namespace(path: Path, master) -> dict:
    key = os.fspath(path)
    if key not in _NAMESPACES:
        _NAMESPACES[key] = trusted_namespace(master)
    return _NAMESPACES[key]
