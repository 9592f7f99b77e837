"""Writes the grading corpus: a small master notebook (real labkit checks, seconds to run) and the sample
submissions an instructor meets, one folder per "student": honest ones, broken ones and hostile ones (every class
of attack of issue 22). Run it again after changing it:

    .venv/bin/python tests/grading_corpus/build_corpus.py

What git cannot hold (FIFOs, links, odd folder names, file times, files of megabytes) is made on a copy by
`add_special_entries(root)` when the tests run. tests/test_grading_corpus.py grades the copy against master/,
with bubblewrap and without it, and asserts each outcome: EXPECTED (student -> exercise -> status) and SKIPPED
(entries listed as not graded). Statuses are the same either way, except for ISOLATION_WITNESSES: samples whose
answers are right only if they escaped their sandbox, which without one they may.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from labkit.grading import student_version

HERE = Path(__file__).resolve().parent
NAME = "corpus.ipynb"

# What the instructor wants for each sample: exercise -> status, in the master's order.
EXERCISES = ["03.weights_gib", "03.kv_cache_gib", "02.decode_tokens_per_s", "02.gguf_quant"]
PASS4 = dict.fromkeys(EXERCISES, "passed")
FAIL4 = dict.fromkeys(EXERCISES, "failed")
MISSING4 = dict.fromkeys(EXERCISES, "missing")
EXPECTED = {
    # honest and broken work
    "correct": PASS4,
    "blank": FAIL4,
    "partly_wrong": {"03.weights_gib": "passed", "03.kv_cache_gib": "failed",
                     "02.decode_tokens_per_s": "failed", "02.gguf_quant": "failed"},
    "infinite_loop": {"03.weights_gib": "passed", "03.kv_cache_gib": "passed",
                      "02.decode_tokens_per_s": "not reached", "02.gguf_quant": "not reached"},
    "kernel_killer": {"03.weights_gib": "passed", "03.kv_cache_gib": "not reached",
                      "02.decode_tokens_per_s": "not reached", "02.gguf_quant": "not reached"},
    "big_output": PASS4,
    "nothing_handed_in": MISSING4,
    "corrupt": FAIL4,  # not JSON: refused with a note
    # honest notebooks in older or re-saved formats: converted and graded, with a note
    "nbformat3": PASS4,
    "no_cell_ids": PASS4,
    "renumbered_ids": PASS4,
    "two_copies": PASS4,  # the newest of two copies is graded; the other is named
    "million_newlines": PASS4,  # one cell of a million newlines: every scan is linear
    # code that tries to change its grade: no effect
    "fake_check": FAIL4,
    "string_built_names": FAIL4,  # the same, with names built from strings (the suspicious-code scan still says so)
    "deleted_checks": {"03.weights_gib": "passed", "03.kv_cache_gib": "failed",
                       "02.decode_tokens_per_s": "passed", "02.gguf_quant": "failed"},
    "skip_tag": {"03.weights_gib": "failed", "03.kv_cache_gib": "failed",
                 "02.decode_tokens_per_s": "passed", "02.gguf_quant": "passed"},
    "with_conftest": PASS4,
    # answers taken from the solution: refused, with a note
    "expected_answers": FAIL4,  # labkit's expected-answer functions refuse inside the sandbox, and are flagged
    "symlink_to_master": FAIL4,  # made at test time
    "hardlink_to_master": FAIL4,  # made at test time
    # reaching the host, other students, the masters, .git: nothing there (answers right only if it escaped)
    "escape_attempts": FAIL4,
    "writes_outside": PASS4,
    "forger": PASS4,  # forges others' records and leaves a process behind: others unaffected, process ended
    # hostile input to the grader itself: that student's row, everyone else's untouched
    "bad_answers": FAIL4,  # answers whose float conversion fails, dicts that mimic the record's tags, 10**400
    "forged_own_records": {"03.weights_gib": "passed", "03.kv_cache_gib": "passed",  # can misreport itself only
                           "02.decode_tokens_per_s": "passed", "02.gguf_quant": "passed"},
    "records_fifo": FAIL4,  # replaced its records file by a FIFO: its own answers are lost, nothing hangs
    "kills_runner": dict.fromkeys(EXERCISES, "not reached"),
    "control_chars": FAIL4,  # error text and answers with control characters and forged "✅ passed" lines
    "fifo_notebook": FAIL4,  # made at test time
    "deep_notebook": FAIL4,  # made at test time: JSON nested 100,000 deep
    "huge_notebook": FAIL4,  # made at test time: 60 MB
    # folder names that broke the reports (made at test time)
    "pipe|name": PASS4,
    '=HYPERLINK("evil")': MISSING4,
    ".dotted": MISSING4,
    "x y": MISSING4,
    "x_y": MISSING4,
    "ctrl\x1b[31mred": MISSING4,
    "new\nline": MISSING4,
}
SKIPPED = {"symlinked_folder": "symbolic link", "stray_file.txt": "not a student's folder",
           "__MACOSX": "macOS archive metadata"}
# The attacks of issue 22, one sample (or more) each; without a sandbox the corpus test grades these (and a correct
# submission) only: the other samples exercise what does not depend on the sandbox.
ISSUE_22 = {"escape_attempts", "forger", "bad_answers", "forged_own_records", "records_fifo", "million_newlines",
            "no_cell_ids", "nbformat3", "renumbered_ids", "two_copies", "symlink_to_master", "hardlink_to_master",
            "expected_answers", "string_built_names", "control_chars", "kills_runner", "fifo_notebook",
            "deep_notebook", "huge_notebook", "corrupt", "pipe|name", '=HYPERLINK("evil")', ".dotted", "x y", "x_y",
            "ctrl\x1b[31mred", "new\nline"}
ISOLATION_WITNESSES = {"escape_attempts"}  # without a sandbox their answers may be right: no status asserted
MADE_AT_TEST_TIME = {"symlink_to_master", "hardlink_to_master", "fifo_notebook", "deep_notebook", "huge_notebook",
                     "million_newlines", "pipe|name", '=HYPERLINK("evil")', ".dotted", "x y", "x_y",
                     "ctrl\x1b[31mred", "new\nline"}

WEIGHTS = "7.25e9 * 1 / 2**30"
KV = '2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * 128 * 32768 * 2 / 2**30'
DECODE = "(len(token_times) - 1) / (token_times[-1] - token_times[0])"


def master() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    nb.cells = [
        new_markdown_cell("# Grading corpus\n\nFour cheap exercises checked by real labkit checks. "
                          "The master notebook for tests/grading_corpus.", id="intro"),
        new_code_cell("import labkit\nfrom labkit import check\n\n"
                      "token_times = [0.0, 0.12, 0.2, 0.31, 0.4, 0.52]  # when each of six tokens arrived (s)",
                      id="setup"),
        new_code_cell("# Your turn: the nominal int8 size of a 7.25-billion-parameter model, in GiB.\n"
                      f"### BEGIN SOLUTION\nweights_gib = {WEIGHTS}\n### END SOLUTION", id="ex-weights"),
        new_code_cell('check("03.weights_gib", weights_gib, parameters=7.25e9, dtype="int8")', id="check-weights"),
        new_code_cell("# Your turn: the KV cache of Llama 3.1 70B (head_dim 128) at 32k tokens, bf16, in GiB.\n"
                      'cfg = labkit.load_config("llama-3.1-70b")\n'
                      f"### BEGIN SOLUTION\nkv_gib = {KV}\n### END SOLUTION", id="ex-kv"),
        new_code_cell('check("03.kv_cache_gib", kv_gib,\n'
                      '      layers=labkit.load_config("llama-3.1-70b")["num_hidden_layers"],\n'
                      '      kv_heads=labkit.load_config("llama-3.1-70b")["num_key_value_heads"],\n'
                      "      head_dim=128, tokens=32768, bytes_per_value=2)", id="check-kv"),
        new_code_cell("# Your turn: decode tokens/s from the arrival times (leave the first token out).\n"
                      f"### BEGIN SOLUTION\ndecode_tps = {DECODE}\n### END SOLUTION", id="ex-decode"),
        new_code_cell('check("02.decode_tokens_per_s", decode_tps, token_times=token_times)', id="check-decode"),
        new_code_cell('# Your turn: the quantization type in "Qwen2.5-7B-Instruct-Q5_K_M.gguf".\n'
                      '### BEGIN SOLUTION\nquant = "Q5_K_M"\n### END SOLUTION', id="ex-quant"),
        new_code_cell('check("02.gguf_quant", quant, filename="Qwen2.5-7B-Instruct-Q5_K_M.gguf")', id="check-quant"),
        new_markdown_cell("## Recap\n\nFour answers, four checks.", id="recap"),
    ]
    return nb


def _cell(nb, cell_id):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def _insert_after(nb, cell_id, source, new_id):
    index = next(i for i, c in enumerate(nb.cells) if c.get("id") == cell_id)
    nb.cells.insert(index + 1, new_code_cell(source, id=new_id))


def _solve(nb, cell_id, solution):
    """Replace the solution block of an exercise cell with the student's code."""
    cell = _cell(nb, cell_id)
    head = cell.source.split("### BEGIN SOLUTION")[0]
    cell.source = head + solution


ESCAPES = r'''# Tries to get out of its sandbox. Each answer below is right only if one kind of escape worked.
import glob, os, pathlib, subprocess

def _pids():
    return [p for p in os.listdir("/proc") if p.isdigit()]

def _cmdlines():
    for p in _pids():
        try:
            yield open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            pass

def sees_the_host():  # other processes, or the grader's own command line
    return len(_pids()) > 20 or any("--master" in c or "pytest" in c for c in _cmdlines())

def writes_the_kernel_or_devices():  # opened for writing and closed: nothing is ever written
    for path in ("/proc/sys/kernel/core_pattern", "/proc/sysrq-trigger"):
        try:
            os.close(os.open(path, os.O_WRONLY))
            return True
        except OSError:
            pass
    for folder in ("/dev", "/sys", "/usr", "/"):
        probe = os.path.join(folder, f"labkit-corpus-{os.getpid()}")
        try:
            open(probe, "w").close()
            os.remove(probe)
            return True
        except OSError:
            pass
    return False

def reads_the_solutions():  # the masters, or the checkout's .git
    import labkit
    starts = {os.getcwd(), os.path.dirname(labkit.__file__), os.environ.get("LABKIT_DATASETS", "/")}
    for p in _pids():
        try:
            starts.add(os.readlink(f"/proc/{p}/cwd"))
        except OSError:
            pass
    for start in starts:
        for folder in [pathlib.Path(start), *pathlib.Path(start).parents]:
            if (folder / ".git").exists() and subprocess.run(["git", "-C", str(folder), "log", "-1"],
                                                             capture_output=True).returncode == 0:
                return True
            if glob.glob(str(folder / "*" / "grading_corpus" / "master" / "*.ipynb")):
                return True
    return bool(glob.glob("/tmp/pytest-of-*/pytest-*/*/master/corpus.ipynb"))

def reaches_other_students():
    mine = os.getcwd()
    found = glob.glob("/tmp/pytest-of-*/pytest-*/*/submissions/*/*.ipynb")
    found += [p for p in glob.glob("/tmp/labkit-grade-*/jobs/*") if not mine.startswith(p)]
    return bool(found)

ESCAPED = {"host": sees_the_host(), "kernel": writes_the_kernel_or_devices(),
           "solutions": reads_the_solutions(), "students": reaches_other_students()}
print(ESCAPED)'''

FORGER = r'''# Forges records for every other student it can find, and leaves a process behind to keep at it.
import glob, os, subprocess, sys
FORGED = '{"nonce": "guessed", "site": 0, "exercise": "03.weights_gib", "arguments": {"answer": {"value": 0}}}\n'
for path in glob.glob("/tmp/labkit-grade-*/jobs/*/records.jsonl") + glob.glob("/grading/*.jsonl"):
    try:
        with open(path, "a") as f:
            f.write(FORGED)
    except OSError:
        pass
DAEMON = """
import glob, time
while True:  # labkit-corpus-forger
    for path in glob.glob("/tmp/labkit-grade-*/jobs/*/records.jsonl") + glob.glob("/grading/*.jsonl"):
        try:
            open(path, "a").write("forged by a leftover process\\n")
        except OSError:
            pass
    time.sleep(0.2)
"""
subprocess.Popen(["/bin/sh", "-c", 'nohup "$0" -c "$1" >/dev/null 2>&1 &', sys.executable, DAEMON],
                 start_new_session=True)'''

FORGE_OWN = r'''# Writes its own records file by hand: lines that are not records, a record nested 50,000 deep, a 2 MB line,
# and a right answer for the last exercise, recorded before the real (wrong) one.
import re
recorder = next(s for s in In if "__labkit_record(" in s)  # IPython's input history
path, nonce = re.search(r"__labkit_record\('([^']+)', '([0-9a-f]+)'", recorder).groups()
deep = "[" * 50_000 + "]" * 50_000
with open(path, "a") as f:
    f.write("not json\n" + deep + "\n" + "x" * 2_000_000 + "\n")
    f.write('{"nonce": "%s", "site": 1, "exercise": "03.kv_cache_gib", "arguments": {"answer": {"value": %s}}}\n'
            % (nonce, deep))
    f.write('{"nonce": "%s", "site": 3, "exercise": "02.gguf_quant", "arguments": {"answer": {"value": "Q5_K_M"}}}\n'
            % nonce)'''

RECORDS_FIFO = r'''# Replaces the grader's records file by a FIFO and its events file by a link to /etc/passwd.
import os, re
recorder = next(s for s in In if "__labkit_record(" in s)
path = re.search(r"__labkit_record\('([^']+)'", recorder).group(1)
os.remove(path)
os.mkfifo(path)
events = os.environ["LABKIT_GRADING_EVENTS"]
os.remove(events)
os.symlink("/etc/passwd", events)'''

EXPECTED_ANSWERS = r'''# Asks labkit for the expected answers instead of working them out.
import labkit.runtimes, labkit.vram
from labkit.check import exercises

def ask(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except Exception as err:
        print("refused:", err)'''

STRING_BUILT = r'''# The same cheat as fake_check, with every name built from strings.
import sys
lk = __import__("lab" + "kit")
fake = lambda exercise_id, answer, **inputs: print(f"✅ [{exercise_id}] correct")
setattr(lk, "ch" + "eck", fake)
setattr(sys.modules["lab" + "kit.ch" + "eck"], "ch" + "eck", fake)
setattr(lk, "load_" + "config", lambda name: {"num_hidden_layers": 1, "num_key_value_heads": 1})'''

CONTROL = r'''# Error text and answers full of control characters, markup and forged "passed" lines.
FORGED = "\n- ✅ **03.kv_cache_gib**: passed\r\n✅ [03.kv_cache_gib] correct\x1b[2J\x00\x07\u202e ]]></failure><x/> | = |"
class Evil:
    shape = ()
    def tolist(self):
        raise ValueError(FORGED)'''


def submissions(m) -> dict[str, nbformat.NotebookNode | None]:
    subs: dict[str, nbformat.NotebookNode | None] = {}
    subs["correct"] = copy.deepcopy(m)
    subs["blank"] = student_version(m)

    nb = copy.deepcopy(m)
    _solve(nb, "ex-kv", 'kv_gib = cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * 128 * 32768 * 2 / 2**30  '
                        "# forgot that K and V are two tensors")
    _solve(nb, "ex-decode", "decode_tps = len(token_times) / (token_times[-1] - token_times[0])")
    _solve(nb, "ex-quant", 'quant = "Q5_K"')
    subs["partly_wrong"] = nb

    nb = copy.deepcopy(m)
    _solve(nb, "ex-decode", "import time\nwhile True:  # waiting for something that never happens\n    time.sleep(0.5)")
    subs["infinite_loop"] = nb

    nb = copy.deepcopy(m)
    _solve(nb, "ex-kv", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)  # the kernel dies here")
    subs["kernel_killer"] = nb

    nb = copy.deepcopy(m)
    _insert_after(nb, "setup", "for _ in range(25):\n    print('y' * 1_000_000)  # 25 MB of output", "big-print")
    subs["big_output"] = nb

    nb = student_version(m)
    _insert_after(nb, "setup", (
        "import labkit\nimport labkit.check\n\n"
        "def check(exercise_id, answer, **inputs):  # every check 'passes'\n"
        "    print(f'✅ [{exercise_id}] correct')\n\n"
        "labkit.check = check\nlabkit.check.check = check\n"
        "labkit.load_config = lambda name: {'num_hidden_layers': 1, 'num_key_value_heads': 1}  # a tiny 'model'"),
        "cheat")
    _solve(nb, "ex-weights", "weights_gib = 1.0")
    _solve(nb, "ex-kv", "kv_gib = 2 * 1 * 1 * 128 * 32768 * 2 / 2**30  # right for the patched config")
    _solve(nb, "ex-decode", "decode_tps = 1.0")
    _solve(nb, "ex-quant", 'quant = "no idea"')
    subs["fake_check"] = nb

    nb = student_version(m)
    _insert_after(nb, "setup", STRING_BUILT, "cheat")
    _solve(nb, "ex-weights", "weights_gib = 1.0")
    _solve(nb, "ex-kv", "kv_gib = 2 * 1 * 1 * 128 * 32768 * 2 / 2**30")
    _solve(nb, "ex-decode", "decode_tps = 1.0")
    _solve(nb, "ex-quant", 'quant = "no idea"')
    subs["string_built_names"] = nb

    nb = copy.deepcopy(m)
    nb.cells = [c for c in nb.cells if c.get("id") not in ("check-kv", "check-quant")]
    subs["deleted_checks"] = nb

    nb = copy.deepcopy(m)
    _solve(nb, "ex-weights", "weights_gib = 7.25e9 / 1e9  # GB, not GiB")
    _cell(nb, "check-weights").metadata["tags"] = ["skip-execution"]
    _solve(nb, "ex-kv", "kv_gib = undefined_name  # raises NameError")
    _cell(nb, "ex-kv").metadata["tags"] = ["raises-exception"]
    _cell(nb, "check-kv").metadata["tags"] = ["skip-execution", "raises-exception"]
    nb.metadata["execution"] = {"timeout": 100_000, "allow_errors": False}
    subs["skip_tag"] = nb

    nb = copy.deepcopy(m)
    _insert_after(nb, "setup", (
        "import os, pathlib, labkit\n"
        "targets = ['../escaped.txt', '../../escaped.txt', os.path.expanduser('~/escaped.txt'),\n"
        "           os.path.join(os.path.dirname(labkit.__file__), 'escaped_by_a_submission.txt')]\n"
        "for target in targets:\n"
        "    try:\n"
        "        pathlib.Path(target).write_text('written by a submission')\n"
        "        print('wrote', target)\n"
        "    except OSError as err:\n"
        "        print('could not write', target, err)"), "escape")
    subs["writes_outside"] = nb

    subs["with_conftest"] = copy.deepcopy(m)
    subs["nothing_handed_in"] = None

    nb = copy.deepcopy(m)
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{index}"
    subs["renumbered_ids"] = nb

    nb = student_version(m)
    _insert_after(nb, "setup", EXPECTED_ANSWERS, "ask")
    _solve(nb, "ex-weights", 'weights_gib = ask(exercises()["03.weights_gib"].expected, parameters=7.25e9, dtype="int8")')
    _solve(nb, "ex-kv", "kv_gib = ask(labkit.vram._expected_kv_gib, layers=80, kv_heads=8, head_dim=128, "
                        "tokens=32768, bytes_per_value=2)")
    _solve(nb, "ex-decode", 'decode_tps = ask(exercises()["02.decode_tokens_per_s"].expected, token_times=token_times)')
    _solve(nb, "ex-quant", 'quant = ask(labkit.runtimes._expected_gguf_quant, "Qwen2.5-7B-Instruct-Q5_K_M.gguf")')
    subs["expected_answers"] = nb

    nb = copy.deepcopy(m)
    _insert_after(nb, "setup", ESCAPES, "escape")
    _solve(nb, "ex-weights", f'weights_gib = {WEIGHTS} * (1 if ESCAPED["host"] else 3)')
    _solve(nb, "ex-kv", f'kv_gib = {KV} * (1 if ESCAPED["kernel"] else 3)')
    _solve(nb, "ex-decode", f'decode_tps = {DECODE} * (1 if ESCAPED["solutions"] else 3)')
    _solve(nb, "ex-quant", 'quant = "Q5_K_M" if ESCAPED["students"] else "nothing found"')
    subs["escape_attempts"] = nb

    nb = copy.deepcopy(m)
    _insert_after(nb, "setup", FORGER, "forge")
    subs["forger"] = nb

    nb = copy.deepcopy(m)
    _solve(nb, "ex-weights", 'weights_gib = {"__float__": "not a number"}  # what the old records format used')
    _solve(nb, "ex-kv", "kv_gib = 10**400")
    _solve(nb, "ex-decode", 'decode_tps = float("nan")')
    _solve(nb, "ex-quant", 'quant = {"t": "float", "v": "inf"}  # what the records format uses')
    subs["bad_answers"] = nb

    nb = copy.deepcopy(m)
    _insert_after(nb, "check-weights", FORGE_OWN, "forge")
    _solve(nb, "ex-quant", 'quant = "Q4_K_M"  # wrong; the forged record says Q5_K_M')
    subs["forged_own_records"] = nb

    nb = copy.deepcopy(m)
    _insert_after(nb, "check-weights", RECORDS_FIFO, "fifo")
    subs["records_fifo"] = nb

    nb = copy.deepcopy(m)
    _insert_after(nb, "check-kv", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)  # the grader's runner",
                  "kill-runner")
    subs["kills_runner"] = nb

    nb = copy.deepcopy(m)
    _insert_after(nb, "setup", CONTROL, "control")
    _solve(nb, "ex-weights", 'weights_gib = "7\\n- ✅ **03.weights_gib**: passed"')
    _solve(nb, "ex-kv", "kv_gib = Evil()")
    _solve(nb, "ex-decode", "raise RuntimeError(FORGED)")
    _solve(nb, "ex-quant", "quant = \"=cmd|' /C calc'!A0\"")
    subs["control_chars"] = nb
    return subs


CONFTEST = '''\
# A student's conftest.py. The grader copies only .ipynb files, so pytest never sees this file;
# if it did, pytest would stop here and the student would get no records (0 points).
raise SystemExit("a student's conftest.py was loaded by the grader")
'''
PYTEST_INI = "[pytest]\naddopts = --collect-only\n"


def _write_raw(path: Path, nb: nbformat.NotebookNode, version: int = 4, minor: int = 5, ids: bool = True) -> None:
    if version == 3:
        path.write_text(nbformat.writes(nbformat.convert(copy.deepcopy(nb), 3), version=3), encoding="utf-8")
        return
    data = json.loads(nbformat.writes(nb))
    data["nbformat_minor"] = minor
    if not ids:
        for cell in data["cells"]:
            cell.pop("id", None)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def main() -> None:
    m = master()
    (HERE / "master").mkdir(exist_ok=True)
    nbformat.write(m, HERE / "master" / NAME)
    root = HERE / "submissions"
    shutil.rmtree(root, ignore_errors=True)
    for student, nb in submissions(m).items():
        folder = root / student
        folder.mkdir(parents=True)
        if nb is None:
            (folder / "README.txt").write_text("This student handed nothing in.\n")
            continue
        nbformat.write(nb, folder / NAME)
    (root / "with_conftest" / "conftest.py").write_text(CONFTEST)
    (root / "with_conftest" / "pytest.ini").write_text(PYTEST_INI)
    for name, kwargs in (("nbformat3", {"version": 3}), ("no_cell_ids", {"minor": 0, "ids": False})):
        (root / name).mkdir()
        _write_raw(root / name / NAME, m, **kwargs)
    (root / "two_copies").mkdir()
    nbformat.write(student_version(m), root / "two_copies" / NAME)  # the older copy: made older at test time
    nbformat.write(m, root / "two_copies" / "corpus (1).ipynb")
    (root / "corrupt").mkdir()
    (root / "corrupt" / NAME).write_text('{"cells": [ this is not JSON\n')
    committed = {p.name for p in root.iterdir()}
    assert committed | MADE_AT_TEST_TIME == set(EXPECTED), sorted(set(EXPECTED) ^ committed ^ MADE_AT_TEST_TIME)
    print(f"wrote {root} ({len(committed)} folders; {len(MADE_AT_TEST_TIME)} more are made at test time)")


def add_special_entries(root: Path, master_folder: Path) -> None:
    """What git cannot hold, made in a copy of submissions/ (`root`) beside a copy of master/."""
    m = master()
    master_file = master_folder / NAME
    (root / "symlink_to_master").mkdir()
    (root / "symlink_to_master" / NAME).symlink_to(os.path.relpath(master_file, root / "symlink_to_master"))
    (root / "hardlink_to_master").mkdir()
    os.link(master_file, root / "hardlink_to_master" / NAME)
    (root / "fifo_notebook").mkdir()
    os.mkfifo(root / "fifo_notebook" / NAME)
    (root / "deep_notebook").mkdir()
    (root / "deep_notebook" / NAME).write_text('{"cells": ' + "[" * 100_000 + "]" * 100_000 + "}")
    (root / "huge_notebook").mkdir()
    with open(root / "huge_notebook" / NAME, "wb") as f:
        f.truncate(60_000_000)  # sparse: 60 MB to the grader, nothing on disk
    nb = copy.deepcopy(m)
    _insert_after(nb, "setup", "\n" * 1_000_000, "newlines")  # the old suspicious-code scan: quadratic in these
    (root / "million_newlines").mkdir()
    nbformat.write(nb, root / "million_newlines" / NAME)
    (root / "symlinked_folder").symlink_to(os.path.relpath(master_folder, root))
    (root / "stray_file.txt").write_text("not a folder\n")
    (root / "__MACOSX").mkdir()
    for name in ("pipe|name", '=HYPERLINK("evil")', ".dotted", "x y", "x_y", "ctrl\x1b[31mred", "new\nline"):
        (root / name).mkdir()
    nbformat.write(m, root / "pipe|name" / NAME)
    old = os.stat(root / "two_copies" / NAME).st_mtime - 3600
    os.utime(root / "two_copies" / NAME, (old, old))


if __name__ == "__main__":
    main()
