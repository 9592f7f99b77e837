"""labkit.grading.sandbox: what a submission can see and touch, checked from inside a real bubblewrap sandbox;
and the report's word for it when there is none."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit.errors import LabkitError
from labkit.grading import sandbox as sandboxes

CHECKOUT = Path(__file__).resolve().parent.parent

INSIDE = r"""
import json, os, socket, sys
seen = {}
seen["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
seen["cmdlines"] = [open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace") for p in seen["pids"]]
seen["uid"] = os.getuid()
seen["caps"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
def writable(path):
    try:
        if os.path.isdir(path):
            probe = os.path.join(path, f"probe-{os.getpid()}")
            open(probe, "w").close()
            os.remove(probe)
        else:
            os.close(os.open(path, os.O_WRONLY))  # opened for writing, nothing written
        return True
    except OSError:
        return False
seen["writable"] = {p: writable(p) for p in os.environ["PROBE_WRITABLE"].split(":") if p}
seen["exists"] = {p: os.path.exists(p) for p in os.environ["PROBE_EXISTS"].split(":") if p}
seen["labkit_parent"] = sorted(os.listdir(os.path.dirname(os.path.dirname(__import__("labkit").__file__))))
seen["interfaces"] = [name for _, name in socket.if_nameindex()]
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    seen["network"] = True
except OSError:
    seen["network"] = False
seen["env"] = sorted(os.environ)
seen["other"] = sorted(os.listdir("/grading"))
open("/grading/mine", "w").write("x")
print("SEEN" + json.dumps(seen))
"""


@pytest.fixture(scope="module")
def bwrap(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    hidden = (root / "masters", root / "submissions")
    for folder in hidden:
        folder.mkdir()
        (folder / "secret.ipynb").write_text("{}")
    files = sandboxes.prepare_class_files(root / "files", hidden)
    chosen = sandboxes.choose("auto", files)
    if chosen.kind != "bwrap":
        pytest.skip(f"no working bubblewrap here: {chosen.description}")
    return files


def _run_inside(files, writable: list[str], exists: list[str], wait: float = 0.0):
    sandbox = sandboxes.Sandbox("bwrap", "")
    env = sandboxes.environment(sandbox, files, sandboxes.job_paths(sandbox, files.root), 1)
    env.update(PROBE_WRITABLE=":".join(writable), PROBE_EXISTS=":".join(exists))
    argv = sandboxes.command(sandbox, files, env)[:-3]
    script = INSIDE + (f"\nimport time; time.sleep({wait})" if wait else "")
    return sandboxes.launch([*argv, sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _seen(process):
    out, err = process.communicate(timeout=120)
    assert "SEEN" in out, err[-2000:]
    return json.loads(out.split("SEEN", 1)[1])


def test_a_submission_sees_only_itself(bwrap, monkeypatch):
    import labkit

    labkit_dir = str(Path(labkit.__file__).resolve().parent)
    writable = ["/grading", "/tmp", "/dev/shm", "/", "/usr", sys.prefix, labkit_dir, "/dev", "/sys",
                "/proc/sys/kernel/core_pattern", "/proc/sysrq-trigger", "/etc"]
    exists = [str(CHECKOUT / ".git"), str(CHECKOUT / "notebooks"), str(CHECKOUT / "tests"), str(bwrap.hidden[0]),
              str(bwrap.hidden[1]), str(bwrap.root), "/etc/shadow", "/root/.ssh", "/work"]
    monkeypatch.setenv("LABKIT_TEST_SECRET", "the grader's own environment")
    seen = _seen(_run_inside(bwrap, writable, exists))
    assert len(seen["pids"]) <= 4, seen["cmdlines"]  # bwrap, setpriv's python: nothing of the host
    sandbox_init = seen["cmdlines"][0]  # bwrap read its options from a pipe: no path of the grader's shows
    assert sandbox_init.startswith("bwrap\0--args\0") and str(bwrap.root) not in sandbox_init, sandbox_init
    assert seen["writable"] == {p: p in ("/grading", "/tmp", "/dev/shm") for p in writable}
    assert not any(v for p, v in seen["exists"].items() if p != "/work"), seen["exists"]
    assert set(seen["labkit_parent"]) <= {"labkit", "datasets", ".venv", "lib", "site-packages"}
    assert seen["interfaces"] == ["lo"] and seen["network"] is False
    assert "LABKIT_TEST_SECRET" not in seen["env"] and seen["caps"] == "0000000000000000"
    if os.geteuid() == 0:
        assert seen["uid"] == sandboxes.NOBODY


def test_two_submissions_do_not_see_each_other(bwrap):
    first = _run_inside(bwrap, [], [], wait=3)
    time.sleep(1.5)  # the first has written /grading/mine by now (it only waits after that)
    second = _seen(_run_inside(bwrap, [], []))
    assert second["other"] == [] and len(second["pids"]) <= 4
    assert _seen(first)["other"] == []


def test_without_bubblewrap_the_report_header_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(sandboxes.shutil, "which", lambda tool: None)  # as on a machine without bwrap
    files = sandboxes.prepare_class_files(tmp_path, ())
    chosen = sandboxes.choose("auto", files)
    assert chosen.kind == "none" and not chosen.concurrent
    assert "NOT ISOLATED" in chosen.description and "apt-get install bubblewrap" in chosen.description
    assert sandboxes.command(chosen, files, {}) == [sys.executable, "-I",
                                                    str(files.sealed_labkit / "grading" / "runner.py")]
    with pytest.raises(LabkitError, match="apt-get install bubblewrap"):
        sandboxes.choose("bwrap", files)
    with pytest.raises(LabkitError, match="auto, bwrap, none"):
        sandboxes.choose("docker", files)
    monkeypatch.setenv("LABKIT_SANDBOX", "none")
    assert "--sandbox none was asked for" in sandboxes.choose(None, files).description
