"""Where each submission runs: a bubblewrap sandbox of its own, or (where there is none) a plain process.

bubblewrap (`bwrap`, what Flatpak uses; Debian/Ubuntu package `bubblewrap`) builds each sandbox from nothing:

- its own PID namespace with a fresh /proc (no other process is visible, the grader's arguments included),
  /proc/sys read-only, a minimal /dev (null, zero, random, tty...) read-only with a private /dev/shm, /sys
  read-only; its own network namespace (loopback only), IPC and UTS namespaces;
- a file system holding only /usr, a few files of /etc (the user database is the sandbox's own), the Python the
  grader runs on, and labkit as a sealed read-only copy (labkit.grading.seal); the masters, the submissions, the
  checkout (.git included), the reports and the other students are not on it;
- writable: size-limited in-memory folders only (/grading for its home, working folder and records; /tmp;
  /dev/shm), gone when the sandbox ends; nothing it writes reaches the host's disk;
- as root, the submission runs as user `nobody` with no capabilities (util-linux `setpriv`), so nothing owned by
  root is writable from inside; as another user, in a user namespace of its own with no capabilities and no
  further user namespaces.

When the grader process ends a run, the sandbox ends with it (`--die-with-parent`, and the PID namespace takes
every process it started). Without bubblewrap (macOS, a locked-down host, or `--sandbox none`) submissions run
as plain processes of the grader's user, one at a time, and the report header says so.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LabkitError

MODES = ("auto", "bwrap", "none")
MODE_VARIABLE = "LABKIT_SANDBOX"
INSIDE = Path("/grading")  # the sandbox's own writable folder
SCRATCH_BYTES = 1 << 30
TMP_BYTES = 1 << 30
SHM_BYTES = 256 << 20
ETC_FILES = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "nsswitch.conf",
             "hosts", "host.conf", "gai.conf", "fonts", "mime.types", "os-release", "protocols", "services",
             "python3", f"python{sys.version_info.major}.{sys.version_info.minor}")
NOBODY = 65534
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"


@dataclass(frozen=True)
class Sandbox:
    """How submissions run, in words for the report header."""

    kind: str  # "bwrap" or "none"
    description: str

    @property
    def concurrent(self) -> bool:
        """Several students at once only when each has a sandbox of its own."""
        return self.kind == "bwrap"


@dataclass
class ClassFiles:
    """What the grader prepares once per class run, in a folder only it can read."""

    root: Path
    sealed_labkit: Path  # the sealed copy of labkit's folder
    real_labkit: Path  # labkit's own folder, where the sandbox mounts the copy
    data_folders: list[tuple[Path, Path]]  # (real data folder, its place in the copy)
    hidden: tuple[Path, ...] = ()  # folders a submission must not see (masters, submissions, reports, jobs)
    sealed_ids: list[str] = field(default_factory=list)
    other_labkits: list[Path] = field(default_factory=list)  # more installs of labkit on the Python it sees

    @property
    def passwd(self) -> Path:
        return self.root / "passwd"

    @property
    def group(self) -> Path:
        return self.root / "group"


_SEALED_COPIES: dict[str, tuple] = {}


def _sealed_copy(real: Path):
    """The sealed copy of labkit's folder, built once per process and source (a class run, or a test session):
    kept in a temporary folder of this process, read-only, removed when it exits."""
    import hashlib
    import tempfile

    from .seal import build_sealed_copy

    digest = hashlib.sha256(sys.version.encode())
    for path in sorted(real.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(real)).encode() + b"\0" + path.read_bytes())
    key = digest.hexdigest()
    if key not in _SEALED_COPIES or not _SEALED_COPIES[key][0].is_dir():
        folder = tempfile.TemporaryDirectory(prefix="labkit-sealed-")
        Path(folder.name).chmod(0o755)
        _SEALED_COPIES[key] = (*build_sealed_copy(real, Path(folder.name)), folder)
    return _SEALED_COPIES[key][:3]


def prepare_class_files(root: Path, hidden: tuple[Path, ...]) -> ClassFiles:
    """The sealed labkit and the sandbox's user database, written under `root` (a private temporary folder)."""
    import labkit

    real = Path(labkit.__file__).resolve().parent
    sealed, data, ids = _sealed_copy(real)
    root.mkdir(parents=True, exist_ok=True)
    (root / "passwd").write_text(f"root:x:0:0:root:/root:/bin/sh\nnobody:x:{NOBODY}:{NOBODY}:nobody:{INSIDE}/home:"
                                 f"/bin/sh\nstudent:x:{os.getuid()}:{os.getgid()}:student:{INSIDE}/home:/bin/sh\n")
    (root / "group").write_text(f"root:x:0:\nnogroup:x:{NOBODY}:\nstudent:x:{os.getgid()}:\n")
    for path in (root / "passwd", root / "group"):
        path.chmod(0o644)
    others = sorted({p.resolve() for folder in _python_folders() for pattern in ("lib*/python3*/*-packages/labkit",
                                                                               "lib/*-packages/labkit")
                     for p in folder.glob(pattern) if (p / "check.py").is_file()} - {real})
    return ClassFiles(root, sealed, real, data, tuple(h.resolve() for h in hidden), ids, others)


def private_copy(files: ClassFiles) -> ClassFiles:
    """The class files with a sealed labkit of their own (without a sandbox a submission can write to it)."""
    import dataclasses

    target = files.root / "sealed" / files.sealed_labkit.name
    shutil.copytree(files.sealed_labkit, target)
    return dataclasses.replace(files, sealed_labkit=target)


@dataclass(frozen=True)
class JobPaths:
    """Where one run keeps its files, as the runner sees them."""

    home: str
    cwd: str
    records: str
    events: str


def job_paths(sandbox: Sandbox, job_dir: Path) -> JobPaths:
    base = INSIDE if sandbox.kind == "bwrap" else job_dir
    return JobPaths(str(base / "home"), str(base / "work"), str(base / "records.jsonl"), str(base / "events.jsonl"))


def environment(sandbox: Sandbox, files: ClassFiles, paths: JobPaths, threads: int) -> dict[str, str]:
    """The whole environment of a run: nothing of the grader's own (its paths and arguments stay out)."""
    from .seal import EVENTS_VARIABLE

    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": paths.home, "TMPDIR": "/tmp" if sandbox.kind == "bwrap" else paths.home,
        "LANG": "C.UTF-8", "MPLBACKEND": "Agg", "MPLCONFIGDIR": f"{paths.home}/mpl",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "JUPYTER_PLATFORM_DIRS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "LABKIT_PROFILE": os.environ.get("LABKIT_PROFILE", "cpu"),
        # jobs share the cores: llama.cpp's and torch's threads spin, and oversubscribed they ran 5x slower
        "LABKIT_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
        EVENTS_VARIABLE: paths.events,
    }
    cache = os.environ.get("LABKIT_CACHE")
    if cache and Path(cache).is_dir():
        env["LABKIT_CACHE"] = cache
    from ..paths import datasets_dir

    # the sealed labkit sits where no pyproject.toml is beside it, so it could not find a checkout's datasets/
    # by itself: name the folder (mounted read-only at the same path in bubblewrap)
    env["LABKIT_DATASETS"] = str(datasets_dir().resolve())
    if sandbox.kind == "none":
        env["PYTHONPATH"] = str(files.sealed_labkit.parent)
    return env


def _python_folders() -> list[Path]:
    folders = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    folders.add(Path(sys.executable).resolve().parent.parent)
    return _outermost(folders)


def _outermost(paths) -> list[Path]:
    paths = sorted(set(paths), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for p in paths:
        if not any(k == p or k in p.parents for k in kept):
            kept.append(p)
    return kept


def command(sandbox: Sandbox, files: ClassFiles, env: dict[str, str]) -> list[str]:
    """The command line that starts the runner for one submission."""
    runner = [sys.executable, "-I", str(files.sealed_labkit / "grading" / "runner.py")]
    if sandbox.kind != "bwrap":
        return runner
    runner[-1] = str(files.real_labkit / "grading" / "runner.py")  # where the sandbox mounts the sealed copy
    from ..paths import datasets_dir

    binds: list[tuple[Path, Path]] = [(p, p) for p in _python_folders() if p != Path("/usr")]
    binds += [(files.sealed_labkit, place) for place in (files.real_labkit, *files.other_labkits)]
    data = datasets_dir().resolve()
    if data.is_dir() and not any(src == data or src in data.parents for src, _ in binds):
        binds.append((data, data))
    cache = env.get("LABKIT_CACHE")
    if cache:
        binds.append((Path(cache).resolve(), Path(cache).resolve()))
    binds += [(real, files.real_labkit / place.relative_to(files.sealed_labkit)) for real, place in files.data_folders]

    args = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--hostname", "grading", "--clearenv"]
    root = os.geteuid() == 0
    if not root:
        args += ["--unshare-user", "--cap-drop", "ALL"] + (["--disable-userns"] if _supports("--disable-userns") else [])
    for key, value in env.items():
        args += ["--setenv", key, value]
    made = set()
    for _, destination in binds:
        for parent in reversed(destination.parents):
            if parent != Path("/") and parent.parts[1] not in ("usr", "bin", "lib", "lib64", "sbin", "etc") \
                    and parent not in made:
                args += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
    args += ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "lib", "lib64", "lib32", "libx32", "sbin"):
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--ro-bind", str(files.passwd), "/etc/passwd", "--ro-bind", str(files.group), "/etc/group"]
    def tmpfs(path: str, size: int) -> list[str]:  # --size came with bubblewrap 0.7: older ones get no cap
        return ["--perms", "1777", *(["--size", str(size)] if _supports("--size") else []), "--tmpfs", path]

    args += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys", "--ro-bind-try", "/proc/sysrq-trigger",
             "/proc/sysrq-trigger", "--dev", "/dev", "--ro-bind", "/sys", "/sys", *tmpfs("/tmp", TMP_BYTES),
             *tmpfs("/dev/shm", SHM_BYTES), "--remount-ro", "/dev", *tmpfs(str(INSIDE), SCRATCH_BYTES)]
    for source, destination in binds:
        args += ["--ro-bind", str(source), str(destination)]
    for hidden in files.hidden:  # a hidden folder inside a mounted one (say, masters kept in the venv): emptied
        for source, destination in binds:
            if source in hidden.parents:
                args += ["--perms", "0000", "--tmpfs", str(destination / hidden.relative_to(source))]
    args += ["--remount-ro", "/", "--chdir", str(INSIDE), "--"]
    if root:
        args += ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
                 "--bounding-set", "-all", "--inh-caps", "-all", "--no-new-privs", "--"]
    return args + runner


def launch(argv: list[str], **popen) -> subprocess.Popen:
    """Start a command line from `command`. bwrap reads its options from a pipe (`--args`), so the sandbox's
    process 1 shows `bwrap --args 3 -- COMMAND`, not the grader's paths."""
    if not argv or argv[0] != "bwrap":
        return subprocess.Popen(argv, **popen)
    split = argv.index("--")
    options, inner = argv[1:split], argv[split:]
    read, write = os.pipe()
    try:
        data = b"\0".join(a.encode("utf-8", "surrogateescape") for a in options) + b"\0"
        if len(data) > 60_000:  # a pipe holds 64 KiB: more would block before bwrap starts reading
            raise LabkitError("the sandbox's command line is too long")
        os.write(write, data)
        os.close(write)
        write = -1
        return subprocess.Popen(["bwrap", "--args", str(read), *inner], pass_fds=(read,), **popen)
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


# ----------------------------------------------------------------------------- which sandbox this machine has

_PROBE = """
import os, socket, sys
problems = []
if len([p for p in os.listdir("/proc") if p.isdigit()]) > 8:
    problems.append("other processes are visible")
for path in ("/", "/usr", "/proc/sys/kernel/core_pattern", "/sys/kernel", "/dev"):
    if os.access(path, os.W_OK):
        problems.append(path + " is writable")
try:
    socket.create_connection(("1.1.1.1", 53), timeout=1)
    problems.append("the network is reachable")
except OSError:
    pass
open("/grading/probe", "w").write("ok")
import jupyter_client, ipykernel, labkit.grading.runner  # noqa
print("PROBLEMS:" + "; ".join(problems) if problems else "SANDBOX-OK")
"""


def _probe(files: ClassFiles) -> str | None:
    """None when a bubblewrap sandbox works here and holds what it should, else why not."""
    bwrap = Sandbox("bwrap", "")
    env = environment(bwrap, files, job_paths(bwrap, files.root), 1)
    argv = command(bwrap, files, env)
    argv = argv[:-3] + [sys.executable, "-c", _PROBE]
    try:
        process = launch(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        stdout, stderr = process.communicate(timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"bwrap could not run ({type(err).__name__}: {err})"
    out = stdout.decode("utf-8", "replace")
    if "SANDBOX-OK" in out:
        return None
    if "PROBLEMS:" in out:
        return "the sandbox was not tight: " + out.split("PROBLEMS:", 1)[1].strip()[:300]
    last = (stderr.decode("utf-8", "replace").strip().splitlines() or ["no output"])[-1]
    return f"bwrap failed here: {last[:300]}"


@functools.cache
def _supports(option: str) -> bool:
    try:
        help_text = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return f"{option} " in help_text


@functools.lru_cache(maxsize=1)
def bwrap_version() -> str:
    try:
        return subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "bwrap"


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def choose(mode: str | None, files: ClassFiles) -> Sandbox:
    """The sandbox for `mode` ("auto", "bwrap" or "none"; default LABKIT_SANDBOX or auto), found by trying it
    with the class's files."""
    mode = (mode or os.environ.get(MODE_VARIABLE) or "auto").strip().lower()
    if mode not in MODES:
        raise LabkitError(f"unknown sandbox {mode!r}. Accepted: {', '.join(MODES)}")
    why = "--sandbox none was asked for" if mode == "none" else None
    if why is None:
        if not sys.platform.startswith("linux"):
            why = f"bubblewrap needs Linux (this is {sys.platform})"
        elif shutil.which("bwrap") is None:
            why = f"bubblewrap is not installed ({INSTALL_HINT})"
        elif os.geteuid() == 0 and shutil.which("setpriv") is None:
            why = "setpriv (util-linux) is missing: as root the sandbox needs it to drop to user nobody"
        else:
            why = _probe(files)
    if why is None:
        return Sandbox("bwrap", (
            f"{bwrap_version()}: each submission in a sandbox of its own (own PID namespace and /proc, no network, "
            f"read-only /usr, /sys, /proc/sys and minimal /dev, only Python and a sealed labkit visible, writable "
            f"only in-memory folders of its own, as user {'nobody' if os.geteuid() == 0 else 'the grader'} without "
            f"capabilities); students ran concurrently"))
    if mode == "bwrap":
        raise LabkitError(f"--sandbox bwrap: no working sandbox: {why}")
    return Sandbox("none", (
        f"NOT ISOLATED ({why}): submissions ran one at a time as plain processes of user '{_user()}', with network "
        f"access, able to read and write whatever that user can (the masters and other students' files "
        f"included); grade untrusted work only with bubblewrap"))
