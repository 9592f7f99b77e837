"""`make lab` itself (not a look-alike command) starts JupyterLab on loopback, with a token, serving notebooks/."""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from labkit.runtimes import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=120) as r:  # a loaded machine answers slowly, never wrongly
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_make_lab_serves_the_course_on_loopback_with_a_token(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env.update(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    proc = subprocess.Popen(["make", "--no-print-directory", "lab", f"PORT={port}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        token = None
        deadline = time.monotonic() + 600  # set-up is already done when the tests run; this is the server start,
        # which takes seconds (minutes on a loaded machine): only a hang reaches this limit
        while token is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(rf"http://127\.0\.0\.1:{port}/lab\?token=(\w+)", "".join(lines))
            token = found.group(1) if found else None
            time.sleep(0.5)
        assert token, f"make lab printed no URL with a token:\n{''.join(lines)[-3000:]}"
        base = f"http://127.0.0.1:{port}"
        assert _status(f"{base}/api/contents/00_basecamp.ipynb?token={token}") == 200  # serves notebooks/
        assert _status(f"{base}/api/contents/00_basecamp.ipynb") in (401, 403)  # and nothing without the token
    finally:
        with contextlib.suppress(ProcessLookupError):  # make may already have exited
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
