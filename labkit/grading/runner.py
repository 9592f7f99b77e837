"""Runs one rebuilt submission inside its sandbox: `python -I .../labkit/grading/runner.py` (the grader starts it;
a script on its own, so it starts without importing labkit).

Reads the job (JSON on stdin: the cells, the time limits, where the records go), starts a fresh IPython kernel,
executes the cells one by one with errors allowed, and prints one result line on stdout:

    LABKIT-RESULT {"cells": [...], "stopped": ..., "records": ..., ...}

A cell that runs past its limit or a kernel that dies ends the run (later cells are "not reached"). Outputs are
counted, not kept. The records and events files are read back without following links and within size limits.
Everything here runs with the student's code beside it, so the grader trusts this line only as that student's
own account: it can misreport their answers and nothing else.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time

RESULT_MARK = "LABKIT-RESULT "
MAX_JOB_BYTES = 200_000_000
MAX_ERRORS = 20
KERNEL_NAME = "labkit-grading"


def _kernelspec(home: str) -> None:
    folder = os.path.join(home, "kernels", KERNEL_NAME)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "kernel.json"), "w") as f:
        json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                ],
                   "display_name": "labkit grading", "language": "python"}, f)
    os.environ["JUPYTER_PATH"] = home


def _read_back(path: str, limit: int) -> tuple[str, str | None]:
    """A file the notebook could have replaced: read only if it is still a plain file (no link, FIFO or device)."""
    import stat

    name = os.path.basename(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        kind = "a symbolic link" if os.path.islink(path) else f"unreadable ({err.strerror})"
        return "", f"the file {name} is {kind}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "not a plain file"
            return "", f"the file {name} is {kind}"
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        return data[:limit].decode("utf-8", "replace"), f"the file {name} was cut at {limit / 1e6:.0f} MB"
    return data.decode("utf-8", "replace"), None


def run(job: dict) -> dict:
    from jupyter_client.manager import KernelManager

    started = time.monotonic()
    deadline = started + float(job["time_limit"])
    for folder in (job["home"], job["cwd"]):
        os.makedirs(folder, exist_ok=True)
    os.makedirs(os.path.join(job["home"], "mpl"), exist_ok=True)
    for path in (job["records"], job["events"]):
        open(path, "w").close()
    jupyter_home = os.path.join(job["home"], ".labkit-jupyter")
    _kernelspec(jupyter_home)
    os.environ["JUPYTER_RUNTIME_DIR"] = os.path.join(jupyter_home, "runtime")

    result: dict = {"cells": [], "stopped": None, "output_bytes": 0, "timings": {}}
    timings = result["timings"]
    timings["prepared"] = round(time.monotonic() - started, 3)
    km = KernelManager(kernel_name=KERNEL_NAME)
    try:
        km.start_kernel(cwd=job["cwd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = km.client()
        client.start_channels()
        client.wait_for_ready(timeout=max(5.0, min(120.0, deadline - time.monotonic())))
        timings["kernel_ready"] = round(time.monotonic() - started, 3)
    except Exception as err:  # noqa: BLE001
        result["stopped"] = f"the kernel did not start ({type(err).__name__}: {str(err)[:200]})"
        _finish(km, None)
        return result

    for index, cell in enumerate(job["cells"]):
        cell_deadline = min(deadline, time.monotonic() + float(job["cell_timeout"]))
        entry = {"index": index, "completed": False, "error": None}
        result["cells"].append(entry)
        if not cell.strip():  # IPython does nothing with a blank cell (but would still split it into lines)
            entry["completed"] = True
            continue
        msg_id = client.execute(cell, store_history=True, allow_stdin=False, stop_on_error=False)
        while True:
            remaining = cell_deadline - time.monotonic()
            if remaining <= 0:
                result["stopped"] = (f"a cell ran longer than the {job['cell_timeout']} s limit"
                                     if cell_deadline < deadline else
                                     f"the notebook ran longer than its {job['time_limit']:.0f} s limit")
                break
            try:
                msg = client.get_iopub_msg(timeout=min(remaining, 0.5))
            except queue.Empty:
                if not km.is_alive():
                    result["stopped"] = "the kernel died (a cell crashed Python or exited it)"
                    break
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg.get("msg_type"), msg.get("content", {})
            if kind == "stream":
                result["output_bytes"] += len(content.get("text", ""))
            elif kind in ("display_data", "execute_result", "update_display_data"):
                result["output_bytes"] += sum(len(str(v)) for v in content.get("data", {}).values())
            elif kind == "error" and entry["error"] is None:
                entry["error"] = [str(content.get("ename", ""))[:100], str(content.get("evalue", ""))[:300]]
            elif kind == "status" and content.get("execution_state") == "idle":
                entry["completed"] = True
                break
        if result["stopped"]:
            break
    timings["cells_done"] = round(time.monotonic() - started, 3)
    _finish(km, client)
    timings["kernel_ended"] = round(time.monotonic() - started, 3)
    result["records"], result["records_problem"] = _read_back(job["records"], job["max_records_bytes"])
    result["events"], result["events_problem"] = _read_back(job["events"], 100_000)
    return result


def _finish(km, client) -> None:
    try:
        if client is not None:
            client.stop_channels()
        km.shutdown_kernel(now=True)
    except Exception:  # noqa: BLE001  a kernel in any state: the sandbox ends it anyway
        pass


def main() -> int:
    job = json.loads(sys.stdin.read(MAX_JOB_BYTES))
    try:
        result = run(job)
    except Exception as err:  # noqa: BLE001  reported to the grader, which notes it for this student only
        result = {"cells": [], "stopped": f"the grader's runner failed: {type(err).__name__}: {str(err)[:300]}"}
    sys.stdout.write("\n" + RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
