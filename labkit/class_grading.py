"""Grading a class: `labkit grade SUBMISSIONS_DIR --master NOTEBOOKS_DIR --out REPORT.csv`.

SUBMISSIONS_DIR holds one folder per student; each folder holds that student's copies of the master
notebooks (same file names). For every (student, notebook) pair the grader:

1. rebuilds the submission from the master (labkit.grading.prepare_submission): check cells restored
   by cell id and turned into recording cells, tags and metadata that could skip a cell removed;
2. writes it, alone, into a fresh temporary folder (only that .ipynb: a student's conftest.py,
   pytest.ini or test files are never copied) and runs `pytest --nbmake` there, with plugin
   autoloading and conftest files off, a per-cell timeout (nbmake) and a per-notebook timeout (here);
   where the OS allows (Linux as root, or with user namespaces) without network access, in its own
   PID and mount namespaces, with every file system read-only except its own folder and the masters,
   the other submissions and the reports out of sight;
3. reads the recorded answers back and decides pass or fail in this process, with this labkit
   (labkit.grading.decide), so nothing the notebook does to labkit changes its grade.

A kernel that loops or dies ends that notebook only; the other students go on. Outputs: the CSV
(one row per student x exercise), a JUnit XML beside it, a summary (REPORT.md) whose header says how
submissions were isolated, and one feedback file per student. See docs/instructors.md.
"""

from __future__ import annotations

import csv
import functools
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from .errors import LabkitError, MissingPackageError
from .grading import ExerciseResult, check_sites, decide, prepare_submission, read_records, trusted_namespace

MAX_NOTEBOOK_BYTES = 20_000_000  # an executed notebook larger than this is not read back (its outputs)
SUSPICIOUS = {  # code that tries to change grading: it gains nothing, but the instructor should know
    r"(^|\n)\s*(labkit\.)?check\s*=": "reassigns check",
    r"def\s+check\s*\(": "defines its own check",
    r"labkit(\.\w+)+\s*=[^=]": "replaces something inside labkit",
    r"settrace|pre_run_cell|post_run_cell|input_transformers|__labkit_record": "hooks the notebook's execution",
}


# ----------------------------------------------------------------------------- isolation

# Runs first inside the new namespaces (as root there): loopback up (a new network namespace has no
# network, and its loopback starts down; Jupyter talks to its kernel over it); the folders to hide
# (masters, submissions, reports, the other students' jobs) covered by empty file systems; every
# mount read-only except the job folder; a private /dev/shm. Then the submission starts.
SANDBOX_SCRIPT = r"""
set -e
ip link set lo up
job="$1"; hide="$2"; shift 2
mount -t tmpfs -o size=256m tmpfs /dev/shm
mkdir /dev/shm/.job
mount --bind "$job" /dev/shm/.job
IFS=:; for d in $hide; do [ -d "$d" ] && mount -t tmpfs -o size=1m tmpfs "$d"; done; unset IFS
mkdir -p "$job"
mount --move /dev/shm/.job "$job"
awk '{print $2}' /proc/self/mounts | sort -u | while read -r m; do
  case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|"$job") ;;
    *) mount -o remount,bind,ro "$m" 2>/dev/null || true ;; esac
done
exec "$@"
"""
# ... and without any capability, so it cannot undo the read-only mounts.
DROP_CAPABILITIES = ("setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--no-new-privs", "--")


@dataclass(frozen=True)
class Isolation:
    """How each submission runs, and a sentence for the report header."""

    sandboxed: bool  # no network, read-only file systems but its own folder, own PID namespace
    namespaces: tuple[str, ...] = ()
    description: str = ""

    def wrap(self, job: Path, hide: tuple[Path, ...] = ()) -> list[str]:
        """The command prefix that runs a command in this sandbox: `job` the only writable folder,
        the folders in `hide` (and everything in them, `job` excepted) out of sight."""
        if not self.sandboxed:
            return []
        hidden = ":".join(str(Path(h).resolve()) for h in hide)
        return [*self.namespaces, "--", "sh", "-c", SANDBOX_SCRIPT, "sh", str(job.resolve()), hidden,
                *DROP_CAPABILITIES]


_PROBE = """
import os, subprocess, sys
job = sys.argv[1]
open(os.path.join(job, "ok"), "w").write("ok")
if os.listdir(os.path.dirname(job)) != ["job"] or os.path.exists(os.path.join(job, "..", "hidden")):
    sys.exit("a hidden folder was visible")
for outside in (os.path.dirname(job), os.path.dirname(os.path.abspath(sys.executable))):
    try:
        open(os.path.join(outside, ".labkit-sandbox-probe"), "w").write("escaped")
        sys.exit("a sandboxed process could write outside its folder")
    except OSError:
        pass
subprocess.run([sys.executable, "-c", "import labkit, nbmake"], check=True)
"""


@functools.lru_cache(maxsize=1)
def detect_isolation() -> Isolation:
    """The sandbox this machine allows, found by trying it (never assumed)."""
    if sys.platform.startswith("linux") and all(shutil.which(t) for t in ("unshare", "ip", "setpriv", "mount")):
        namespaces = ("unshare", "--net", "--pid", "--fork", "--kill-child", "--mount")
        if os.geteuid() != 0:
            namespaces = (namespaces[0], "--map-root-user", *namespaces[1:])
        candidate = Isolation(True, namespaces, (
            "each submission ran without network access, in its own PID and mount namespaces, with every file "
            "system read-only except its own temporary folder, the folders below hidden, and without "
            "capabilities to undo that"))
        with tempfile.TemporaryDirectory(prefix="labkit-probe-") as tmp:
            job = Path(tmp) / "inside" / "job"
            job.mkdir(parents=True)
            (job.parent / "hidden").mkdir()
            if _works([*candidate.wrap(job, (job.parent,)), sys.executable, "-c", _PROBE, str(job)]) and (
                    job / "ok").exists():
                return candidate
    return Isolation(False, (), (
        f"submissions ran WITH network access and could write wherever user '{_user_name()}' can: this "
        "machine allows no sandbox (Linux with unshare and mount namespaces: run as root, e.g. in a "
        "container, or enable user namespaces)"))


def _works(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _user_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


# ----------------------------------------------------------------------------- one notebook of one student


@dataclass
class NotebookGrade:
    """One student's grade on one master notebook."""

    student: str
    notebook: str
    results: list[ExerciseResult]
    run_problem: str | None = None  # timeout, dead kernel, ...
    broken_cells: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class GradingLimits:
    cell_timeout: int = 120
    notebook_timeout: int = 600
    threads: int = 1  # CPU threads per submission: the cores shared among the jobs (labkit.hardware.cpu_threads)


def _stopped_reason(junit: Path, log: str, limits: GradingLimits) -> str | None:
    text = log
    if junit.is_file():
        try:
            root = ElementTree.parse(junit).getroot()
            text += " ".join((e.get("message") or "") + (e.text or "") for e in root.iter()
                             if e.tag in ("failure", "error"))
        except ElementTree.ParseError:
            pass
    if "DeadKernelError" in text or "Kernel died" in text:
        return "the kernel died (a cell crashed Python or exited it)"
    if "CellTimeoutError" in text or "timed out" in text.lower():
        return f"a cell ran longer than the {limits.cell_timeout} s limit"
    return None


def _broken_cells(executed: Path) -> tuple[list[str], str | None]:
    import nbformat

    if not executed.is_file():
        return [], None
    size = executed.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        return [], f"the executed notebook is {size / 1e6:.0f} MB of output; its outputs were not read"
    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:  # noqa: BLE001  whatever the run left behind
        return [], None
    broken = []
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                broken.append(f"cell {index + 1}: {out.get('ename')}: {str(out.get('evalue'))[:200]}")
    return broken, None


def _suspicious(nb) -> list[str]:
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return [f"the submission {what} (no effect on the grade)" for pattern, what in SUSPICIOUS.items()
            if re.search(pattern, code)]


def grade_notebook(student: str, master_path: Path, submission_path: Path | None, workdir: Path,
                   limits: GradingLimits, isolation: Isolation, hide: tuple[Path, ...] = ()) -> NotebookGrade:
    """Run one submission under nbmake in a clean folder and grade it here."""
    import nbformat

    master = nbformat.read(master_path, as_version=4)
    started = time.monotonic()
    notes: list[str] = []
    submission = None
    if submission_path is not None:
        try:
            submission = nbformat.read(submission_path, as_version=4)
        except Exception as err:  # noqa: BLE001  a corrupt file is the student's problem, not the grader's
            notes.append(f"the notebook could not be read ({type(err).__name__}); graded as blank")
    if submission_path is None:
        sites = check_sites(master)
        results = [ExerciseResult(s.exercise_id, "missing", f"{master_path.name} was not handed in") for s in sites]
        return NotebookGrade(student, master_path.name, results, notes=notes)
    if submission is not None:
        notes += _suspicious(submission)

    nonce = secrets.token_hex(16)
    work, home = workdir / "work", workdir / "home"
    work.mkdir(parents=True)
    home.mkdir()
    records = workdir / "records.jsonl"
    records.touch()
    prepared, sites = prepare_submission(master, submission, str(records), nonce, limits.cell_timeout)
    target = work / master_path.name
    nbformat.write(prepared, target)
    ini = workdir / "pytest.ini"
    ini.write_text("[pytest]\n")
    junit = workdir / "junit.xml"
    command = [*isolation.wrap(workdir, hide), sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest",
               "-p", "nbmake.pytest_plugin", "-c", str(ini), "--rootdir", str(work), "--nbmake",
               f"--nbmake-timeout={limits.cell_timeout}", "--overwrite", f"--junitxml={junit}", str(target)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": os.environ.get("LANG", "C.UTF-8"),
           "HOME": str(home), "TMPDIR": str(home), "MPLCONFIGDIR": str(home), "MPLBACKEND": "Agg",
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
           "LABKIT_PROFILE": os.environ.get("LABKIT_PROFILE", "cpu"),
           # jobs share the cores: llama.cpp's and torch's threads spin, and oversubscribed they ran 5x slower
           "LABKIT_THREADS": str(limits.threads), "OMP_NUM_THREADS": str(limits.threads)}
    log_path = workdir / "pytest.log"
    stopped = None
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            process.wait(timeout=limits.notebook_timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(process)
            stopped = f"the notebook ran longer than the {limits.notebook_timeout} s limit"
    with open(log_path, "rb") as log:
        tail = log.read()[-20_000:].decode("utf-8", "replace")
    stopped = stopped or _stopped_reason(junit, tail, limits)
    broken, note = _broken_cells(target)
    if note:
        notes.append(note)
    results = decide(sites, read_records(records, nonce), _trusted(master_path), stopped)
    return NotebookGrade(student, master_path.name, results, stopped, broken, notes, time.monotonic() - started)


@functools.lru_cache(maxsize=64)
def _trusted(master_path: Path) -> dict:
    import nbformat

    return trusted_namespace(nbformat.read(master_path, as_version=4))


def _kill_tree(process: subprocess.Popen) -> None:
    import psutil

    try:
        parent = psutil.Process(process.pid)
        victims = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        victims = []
    for p in victims:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()


# ----------------------------------------------------------------------------- the class


@dataclass
class ClassReport:
    grades: list[NotebookGrade]
    isolation: Isolation
    limits: GradingLimits
    seconds: float
    csv_path: Path
    junit_path: Path
    summary_path: Path
    feedback_dir: Path
    hidden: tuple[Path, ...] = ()

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


def _students(submissions: Path) -> list[Path]:
    if not submissions.is_dir():
        raise LabkitError(f"{submissions} is not a folder; give the folder that holds one folder per student")
    students = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not students:
        raise LabkitError(f"{submissions} has no student folders: put each student's notebooks in its own folder")
    return students


def _folders_to_hide(*folders: Path) -> tuple[Path, ...]:
    """The folders a submission should not see, less any that hold the Python or labkit it runs on."""
    needed = [Path(sys.prefix).resolve(), Path(sys.executable).resolve(), Path(__file__).resolve().parent]
    folders = tuple(dict.fromkeys(f.resolve() for f in folders))
    return tuple(f for f in folders if not any(n == f or f in n.parents for n in needed))


def _submission(student: Path, name: str) -> Path | None:
    direct = student / name
    if direct.is_file():
        return direct
    found = sorted(p for p in student.rglob(name) if ".ipynb_checkpoints" not in p.parts)
    return found[0] if found else None


def grade_class(submissions: str | Path, master: str | Path, out: str | Path, *, jobs: int | None = None,
                cell_timeout: int = 120, notebook_timeout: int = 600, progress: bool = True) -> ClassReport:
    """Grade every student folder in `submissions` against the notebooks in `master`; write the reports."""
    try:
        import nbmake  # noqa: F401
    except ImportError as err:
        raise MissingPackageError("nbmake", "Grading a class (it runs each submission under pytest --nbmake)",
                                  "dev") from err
    from tqdm.auto import tqdm

    submissions, master, out = Path(submissions), Path(master), Path(out)
    masters = sorted(master.glob("*.ipynb")) if master.is_dir() else []
    if not masters:
        raise LabkitError(f"{master} holds no .ipynb files; --master takes the folder of master notebooks")
    if out.suffix != ".csv":
        raise LabkitError(f"--out must name a .csv file, got {out}")
    jobs = max(1, jobs or os.cpu_count() or 1)
    limits = GradingLimits(cell_timeout, notebook_timeout, threads=max(1, (os.cpu_count() or 1) // jobs))
    isolation = detect_isolation()
    students = _students(submissions)
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)

    pending = {s.name: len(masters) for s in students}
    grades: list[NotebookGrade] = []
    with tempfile.TemporaryDirectory(prefix="labkit-grade-") as tmp, \
            tqdm(total=len(students), unit="student", desc="grading", disable=not progress) as bar:
        os.chmod(tmp, 0o755)
        tasks = [(s, m, Path(tmp) / f"{i:04d}-{j:02d}") for i, s in enumerate(students) for j, m in enumerate(masters)]
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            hide = _folders_to_hide(submissions, master, out.parent, Path(tmp))  # each job sees its own folder
            futures = [pool.submit(grade_notebook, s.name, m, _submission(s, m.name), w, limits, isolation, hide)
                       for s, m, w in tasks]
            for future in futures:
                grade = future.result()
                grades.append(grade)
                pending[grade.student] -= 1
                if pending[grade.student] == 0:
                    bar.update(1)
    report = ClassReport(grades, isolation, limits, time.monotonic() - started, out, out.with_suffix(".xml"),
                         out.with_suffix(".md"), out.parent / f"{out.stem}-feedback",
                         hide if isolation.sandboxed else ())
    write_csv(report)
    write_junit(report)
    write_feedback(report)
    write_summary(report)
    return report


# ----------------------------------------------------------------------------- reports


def _rows(report: ClassReport):
    for g in report.grades:
        for r in g.results:
            yield g, r


def write_csv(report: ClassReport) -> None:
    with open(report.csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "notebook", "exercise", "status", "points", "max_points", "message", "slip",
                         "hint", "notes"])
        for g, r in _rows(report):
            notes = "; ".join([*r.notes, *g.notes])
            writer.writerow([g.student, g.notebook, r.exercise_id, r.status, r.points, 1, r.message, r.slip or "",
                             r.hint, notes])


def write_junit(report: ClassReport) -> None:
    suites = ElementTree.Element("testsuites", name="labkit grade", time=f"{report.seconds:.1f}")
    for student, (got, total) in report.scores().items():
        grades = [g for g in report.grades if g.student == student]
        suite = ElementTree.SubElement(suites, "testsuite", name=student, tests=str(total),
                                       failures=str(total - got), time=f"{sum(g.seconds for g in grades):.1f}")
        props = ElementTree.SubElement(suite, "properties")
        ElementTree.SubElement(props, "property", name="isolation", value=report.isolation.description)
        for g in grades:
            for r in g.results:
                case = ElementTree.SubElement(suite, "testcase", classname=f"{student}.{Path(g.notebook).stem}",
                                              name=r.exercise_id)
                if r.status != "passed":
                    failure = ElementTree.SubElement(case, "failure", type=r.status, message=r.message[:500])
                    failure.text = f"{r.message}\nHint: {r.hint}"
    ElementTree.ElementTree(suites).write(report.junit_path, encoding="utf-8", xml_declaration=True)


_ICON = {"passed": "✅", "failed": "❌", "not reached": "⏸", "missing": "∅"}


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", name)[:100] or "student"


def write_feedback(report: ClassReport) -> None:
    report.feedback_dir.mkdir(parents=True, exist_ok=True)
    for student, (got, total) in report.scores().items():
        lines = [f"# Feedback for {student}: {got}/{total} exercises passed", ""]
        for g in (g for g in report.grades if g.student == student):
            lines.append(f"## {g.notebook}")
            if g.run_problem:
                lines.append(f"- The run stopped early: {g.run_problem}. Exercises after that point were not reached.")
            lines += [f"- A cell raised an error, {b}" for b in g.broken_cells[:10]]
            lines += [f"- Note: {n}" for n in g.notes]
            for r in g.results:
                lines.append(f"- {_ICON[r.status]} **{r.exercise_id}**: {r.status}"
                             + (f". {r.message}" if r.message and r.status != "passed" else ""))
                if r.status in ("failed", "not reached") and r.hint:
                    lines.append(f"  - Hint: {r.hint}")
            lines.append("")
        (report.feedback_dir / f"{_safe(student)}.md").write_text("\n".join(lines), encoding="utf-8")


def write_summary(report: ClassReport) -> None:
    from . import __version__

    header = [
        f"# Grading report ({time.strftime('%Y-%m-%d %H:%M %Z')})", "",
        f"- Isolation: {report.isolation.description}.",
        *([f"- Hidden from submissions: {', '.join(str(h) for h in report.hidden)}."] if report.hidden else []),
        f"- Limits: {report.limits.cell_timeout} s per cell, {report.limits.notebook_timeout} s per notebook, "
        f"{report.limits.threads} CPU thread(s) per submission.",
        f"- Graded by labkit {__version__} on Python {sys.version.split()[0]}, in {report.seconds:.0f} s.",
        f"- Files: {report.csv_path.name} (one row per student x exercise), {report.junit_path.name} (JUnit), "
        f"{report.feedback_dir.name}/ (one file per student).", "",
    ]
    exercises = list(dict.fromkeys(r.exercise_id for _, r in _rows(report)))
    table = report.table()
    lines = ["| student | score | " + " | ".join(exercises) + " |", "|---|---|" + "---|" * len(exercises)]
    for student, (got, total) in report.scores().items():
        cells = [_ICON[table[student][e]] if e in table[student] else "" for e in exercises]
        lines.append(f"| {student} | {got}/{total} | " + " | ".join(cells) + " |")
    problems = [f"- {g.student} / {g.notebook}: {g.run_problem}" for g in report.grades if g.run_problem]
    text = header + lines + ([""] + ["Runs that stopped early:"] + problems if problems else [])
    report.summary_path.write_text("\n".join(text) + "\n", encoding="utf-8")


def summary_text(report: ClassReport) -> str:
    return report.summary_path.read_text(encoding="utf-8")
