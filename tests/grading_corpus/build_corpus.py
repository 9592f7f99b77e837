"""Writes the grading corpus: a small master notebook (real labkit checks, seconds to run) and the
sample submissions an instructor meets, one folder per "student". Run it again after changing it:

    .venv/bin/python tests/grading_corpus/build_corpus.py

tests/test_check_grading.py grades submissions/ against master/ and asserts each outcome (EXPECTED).
"""

from __future__ import annotations

import copy
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
EXPECTED = {
    "correct": PASS4,
    "blank": dict.fromkeys(EXERCISES, "failed"),
    "partly_wrong": {"03.weights_gib": "passed", "03.kv_cache_gib": "failed",
                     "02.decode_tokens_per_s": "failed", "02.gguf_quant": "failed"},
    "infinite_loop": {"03.weights_gib": "passed", "03.kv_cache_gib": "passed",
                      "02.decode_tokens_per_s": "not reached", "02.gguf_quant": "not reached"},
    "kernel_killer": {"03.weights_gib": "passed", "03.kv_cache_gib": "not reached",
                      "02.decode_tokens_per_s": "not reached", "02.gguf_quant": "not reached"},
    "big_output": PASS4,
    "fake_check": dict.fromkeys(EXERCISES, "failed"),
    "deleted_checks": {"03.weights_gib": "passed", "03.kv_cache_gib": "failed",
                       "02.decode_tokens_per_s": "passed", "02.gguf_quant": "failed"},
    "skip_tag": {"03.weights_gib": "failed", "03.kv_cache_gib": "failed",
                 "02.decode_tokens_per_s": "passed", "02.gguf_quant": "passed"},
    "writes_outside": PASS4,
    "with_conftest": PASS4,
    "nothing_handed_in": dict.fromkeys(EXERCISES, "missing"),
}


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
                      "### BEGIN SOLUTION\nweights_gib = 7.25e9 * 1 / 2**30\n### END SOLUTION", id="ex-weights"),
        new_code_cell('check("03.weights_gib", weights_gib, parameters=7.25e9, dtype="int8")', id="check-weights"),
        new_code_cell("# Your turn: the KV cache of Llama 3.1 70B (head_dim 128) at 32k tokens, bf16, in GiB.\n"
                      'cfg = labkit.load_config("llama-3.1-70b")\n'
                      '### BEGIN SOLUTION\nkv_gib = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * 128 '
                      "* 32768 * 2 / 2**30\n### END SOLUTION", id="ex-kv"),
        new_code_cell('check("03.kv_cache_gib", kv_gib,\n'
                      '      layers=labkit.load_config("llama-3.1-70b")["num_hidden_layers"],\n'
                      '      kv_heads=labkit.load_config("llama-3.1-70b")["num_key_value_heads"],\n'
                      "      head_dim=128, tokens=32768, bytes_per_value=2)", id="check-kv"),
        new_code_cell("# Your turn: decode tokens/s from the arrival times (leave the first token out).\n"
                      "### BEGIN SOLUTION\n"
                      "decode_tps = (len(token_times) - 1) / (token_times[-1] - token_times[0])\n"
                      "### END SOLUTION", id="ex-decode"),
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
    _solve(nb, "ex-decode", "while True:  # waiting for something that never happens\n    pass")
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
    return subs


CONFTEST = '''\
# A student's conftest.py. The grader copies only .ipynb files, so pytest never sees this file;
# if it did, pytest would stop here and the student would get no records (0 points).
raise SystemExit("a student's conftest.py was loaded by the grader")
'''
PYTEST_INI = "[pytest]\naddopts = --collect-only\n"


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
    print(f"wrote {root} ({len(EXPECTED)} students)")


if __name__ == "__main__":
    main()
