from pathlib import Path

import nbformat
import pytest

from labkit.check import check, exercise, exercises, validator
from labkit.errors import LabkitError
from labkit.grading import exercise_ids, grade_executed, strip_solutions, student_version


@exercise("test.double", hint="Multiply by two.")
def _double(x):
    return 2 * x


@validator("test.positive", hint="Any number above zero.")
def _positive(answer):
    return None if answer > 0 else f"{answer} is not positive"


def test_check_passes_a_right_answer(capsys):
    check("test.double", 8, x=4)
    assert "✅ [test.double]" in capsys.readouterr().out


def test_check_fails_a_wrong_answer_with_the_hint():
    with pytest.raises(AssertionError) as err:
        check("test.double", 9, x=4)
    assert "Multiply by two." in str(err.value) and "test.double" in str(err.value)


def test_check_fails_a_missing_answer_with_the_hint():
    with pytest.raises(AssertionError, match="no answer yet"):
        check("test.double", None, x=4)


def test_validator_messages_reach_the_learner():
    check("test.positive", 3)
    with pytest.raises(AssertionError, match="-1 is not positive"):
        check("test.positive", -1)


def test_unknown_exercise_lists_known_ones():
    with pytest.raises(LabkitError, match="test.double"):
        check("test.nope", 1)


def test_every_registered_exercise_has_a_hint():
    for ex in exercises().values():
        assert len(ex.hint) > 10, ex.id


SOLVED = '''x = 1
### BEGIN SOLUTION
answer = 2 * x
total, count = answer, 1
### END SOLUTION
print(answer)'''


def test_strip_solutions_leaves_placeholders_for_assigned_names():
    stripped = strip_solutions(SOLVED)
    assert "2 * x" not in stripped
    assert "# YOUR CODE HERE" in stripped
    assert "answer = None" in stripped and "total = None" in stripped and "count = None" in stripped
    assert stripped.startswith("x = 1") and stripped.endswith("print(answer)")


def test_strip_solutions_keeps_indentation():
    src = "def f():\n    ### BEGIN SOLUTION\n    y = 3\n    ### END SOLUTION\n    return y"
    assert strip_solutions(src) == "def f():\n    # YOUR CODE HERE\n    y = None\n    return y"


def test_unbalanced_markers_are_refused():
    with pytest.raises(LabkitError, match="unbalanced"):
        strip_solutions("### BEGIN SOLUTION\nx = 1\n")


def _nb(*sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def test_student_version_really_fails_the_check():
    from labkit.grading import execute

    nb = _nb("from labkit import check\nimport tests.test_check_grading",
             "### BEGIN SOLUTION\nanswer = 8\n### END SOLUTION",
             'check("test.double", answer, x=4)')
    assert exercise_ids(nb) == ["test.double"]
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    solved = grade_executed(execute(nb, cwd=root), "solved")
    assert solved.passed == ["test.double"] and not solved.failed and not solved.broken_cells, str(solved)
    student = grade_executed(execute(student_version(nb), cwd=root), "student")
    assert list(student.failed) == ["test.double"] and "Multiply by two." in student.failed["test.double"]
    assert not student.broken_cells, student.broken_cells
    assert os.path.exists(root / "labkit")


# ----------------------------------------------------------------------------- slips and distances


def test_a_wrong_number_says_how_far_off_without_the_answer():
    from labkit.check import evaluate

    verdict = evaluate("test.double", 30, x=4)  # expected 8
    assert not verdict.passed and "3.8x too large" in verdict.message
    assert "8" not in verdict.message.replace("3.8", "")  # the expected value is not printed
    close = evaluate("test.double", 8.5, x=4)
    assert "close (within 10%)" in close.message and "too high" in close.message
    assert "10^3 times too small" in evaluate("test.double", 0.008, x=4).message


def test_the_standard_slips_are_named():
    from labkit.check import evaluate

    args = dict(layers=80, kv_heads=8, head_dim=128, tokens=32768, bytes_per_value=2)
    right = 2 * 80 * 8 * 128 * 32768 * 2 / 2**30
    assert evaluate("03.kv_cache_gib", right, **args).passed
    half = evaluate("03.kv_cache_gib", right / 2, **args)
    assert not half.passed and "only K or only V" in half.slip and "only K or only V" in half.message
    gb = evaluate("03.kv_cache_gib", right * 2**30 / 1e9, **args)
    assert "GB" in gb.slip and "GiB" in gb.slip
    assert evaluate("03.kv_cache_gib", right * 8, **args).slip.startswith("counting bits")
    assert evaluate("03.kv_cache_gib", right * 3, **args).slip is None  # no slip gives 3x


def test_query_heads_slip_reads_the_config():
    from labkit.check import evaluate
    from labkit.models import load_config

    cfg = load_config("qwen2.5-7b")
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    right = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * 2
    wrong = 2 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * head_dim * 2
    assert evaluate("01.kv_bytes_per_token", right, config="qwen2.5-7b").passed
    assert "query" in evaluate("01.kv_bytes_per_token", wrong, config="qwen2.5-7b").slip


def test_a_slip_that_changes_nothing_is_not_named():
    from labkit.check import evaluate

    verdict = evaluate("02.percent_of_roofline", 5.0, tokens_per_s=10, roofline=100)  # 10% expected
    # the 'upside down' slip gives 1000: 5.0 matches no slip
    assert verdict.slip is None and "2x too small" in verdict.message


def test_min_gpus_does_not_hand_out_the_answer():
    import warnings

    from labkit.check import evaluate
    from labkit.vram import estimate_inference, gpus_needed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        need = gpus_needed(estimate_inference("llama-3.1-70b", "bf16", context=32768), 80)
    inputs = dict(model="llama-3.1-70b", dtype="bf16", context=32768, gb=80)
    assert evaluate("03.min_gpus", need, **inputs).passed
    too_few = evaluate("03.min_gpus", 1, **inputs)
    assert not too_few.passed and "does NOT fit" in too_few.message and "fewest" not in too_few.message
    assert "fewer do too" in evaluate("03.min_gpus", need + 3, **inputs).message
    assert "whole number" in evaluate("03.min_gpus", 2.5, **inputs).message


def test_prediction_is_checked_against_the_measurement():
    from labkit.check import evaluate

    assert evaluate("02.predict_thread_speedup", 1.3, tokens_per_s_1=20.0, tokens_per_s_2=25.0).passed
    off = evaluate("02.predict_thread_speedup", 2.0, tokens_per_s_1=20.0, tokens_per_s_2=22.0)
    assert not off.passed and "helped less than you expected" in off.message
    assert "not what two cores" in evaluate("02.predict_thread_speedup", 4, tokens_per_s_1=20.0,
                                            tokens_per_s_2=22.0).message


# ----------------------------------------------------------------------------- rebuilding a submission


def _master():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from labkit import check\nx = 4", id="setup"),
        nbformat.v4.new_code_cell("### BEGIN SOLUTION\nanswer = 2 * x\n### END SOLUTION", id="solve"),
        nbformat.v4.new_code_cell('check("test.double", answer, x=x)', id="check"),
        nbformat.v4.new_code_cell('check("test.positive", answer)', id="check2"),
    ]
    return nb


def test_prepare_restores_checks_by_id_and_drops_tags():
    from labkit.grading import prepare_submission

    sub = _master()
    sub.cells[2].source = 'print("✅ [test.double] correct")'  # edited check
    sub.cells[1].metadata["tags"] = ["raises-exception"]
    sub.cells.insert(2, nbformat.v4.new_code_cell("extra = 1", id="mine"))
    del sub.cells[4]  # check2 deleted
    sub.metadata["execution"] = {"timeout": 99999}
    nb, sites = prepare_submission(_master(), sub, "/tmp/records.jsonl", "n0nce", cell_timeout=7)
    assert [c.get("id") for c in nb.cells] == ["setup", "solve", "mine", "check", "check2"]
    assert [s.status for s in sites] == ["edited", "deleted"]
    assert all(not c.metadata for c in nb.cells)
    assert "__labkit_record(" in nb.cells[3].source and "n0nce" in nb.cells[3].source
    assert nb.metadata["execution"] == {"allow_errors": True, "timeout": 7}
    blank, _ = prepare_submission(_master(), None, "/tmp/r", "n", 7)
    assert "answer = None" in blank.cells[1].source


def test_decide_uses_the_graders_labkit(tmp_path):
    from labkit.grading import check_sites, decide, read_records

    sites = check_sites(_master())
    records = tmp_path / "r.jsonl"
    records.write_text(
        '{"nonce": "n", "site": 0, "exercise": "test.double", "arguments": {"answer": {"value": 8}, "x": {"value": 4}}}\n'
        '{"nonce": "forged", "site": 1, "exercise": "test.positive", "arguments": {"answer": {"value": 1}}}\n'
        'not json\n')
    results = decide(sites, read_records(records, "n"), namespace={}, stopped="the kernel died")
    assert [r.status for r in results] == ["passed", "not reached"]
    assert "the kernel died" in results[1].message
    records.write_text('{"nonce": "n", "site": 0, "arguments": {"answer": {"error": "NameError: answer"}, '
                       '"x": {"value": 4}}}\n')
    failed = decide(sites, read_records(records, "n"), namespace={})[0]
    assert failed.status == "failed" and "NameError" in failed.message and failed.hint == "Multiply by two."


# ----------------------------------------------------------------------------- grading the corpus (layer 4)

CORPUS = Path(__file__).resolve().parent / "grading_corpus"


def _tree_digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def graded_corpus(tmp_path_factory):
    """`labkit grade SUBMISSIONS --master MASTER --out REPORT.csv` over the corpus, as an instructor runs it."""
    import csv
    import sys
    import time

    pytest.importorskip("nbmake")
    sys.path.insert(0, str(CORPUS))
    from build_corpus import EXPECTED

    from labkit.__main__ import main

    out = tmp_path_factory.mktemp("grades") / "report.csv"
    before = _tree_digest(CORPUS)
    started = time.monotonic()
    code = main(["grade", str(CORPUS / "submissions"), "--master", str(CORPUS / "master"), "--out", str(out),
                 "--timeout", "15", "--notebook-timeout", "120", "--jobs", "2"])
    seconds = time.monotonic() - started
    print(f"graded the corpus ({len(EXPECTED)} students) in {seconds:.0f} s")
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {"code": code, "out": out, "rows": rows, "expected": EXPECTED, "before": before, "seconds": seconds}


def _row(graded, student, exercise):
    return next(r for r in graded["rows"] if r["student"] == student and r["exercise"] == exercise)


def test_corpus_every_sample_is_graded_as_an_instructor_wants(graded_corpus):
    got: dict[str, dict[str, str]] = {}
    for row in graded_corpus["rows"]:
        got.setdefault(row["student"], {})[row["exercise"]] = row["status"]
    assert got == graded_corpus["expected"]
    for row in graded_corpus["rows"]:
        assert row["points"] == ("1" if row["status"] == "passed" else "0")
        if row["status"] in ("failed", "not reached"):
            assert row["hint"], row


def test_corpus_messages_name_the_slip_and_the_reason(graded_corpus):
    g = graded_corpus
    assert "only K or only V" in _row(g, "partly_wrong", "03.kv_cache_gib")["slip"]
    assert "n instead of n − 1" in _row(g, "partly_wrong", "02.decode_tokens_per_s")["message"]
    assert "GB" in _row(g, "skip_tag", "03.weights_gib")["slip"]  # the skip-execution tag did not skip it
    assert "NameError" in _row(g, "skip_tag", "03.kv_cache_gib")["message"]
    assert "cell ran longer than the 15 s" in _row(g, "infinite_loop", "02.decode_tokens_per_s")["message"]
    assert "kernel died" in _row(g, "kernel_killer", "03.kv_cache_gib")["message"]
    assert "deleted" in _row(g, "deleted_checks", "03.kv_cache_gib")["message"]
    assert "no answer yet" in _row(g, "blank", "02.gguf_quant")["message"]
    assert "not handed in" in _row(g, "nothing_handed_in", "03.weights_gib")["message"]
    fake = _row(g, "fake_check", "03.kv_cache_gib")
    assert "changed what `labkit.load_config" in fake["notes"] and "reassigns check" in fake["notes"]
    assert "MB of output" in _row(g, "big_output", "02.gguf_quant")["notes"]


def test_corpus_submissions_cannot_touch_files_outside_their_sandbox(graded_corpus):
    from labkit.class_grading import detect_isolation

    assert _tree_digest(CORPUS) == graded_corpus["before"], "grading changed the corpus folder"
    escaped = Path(__file__).resolve().parent.parent / "labkit" / "escaped_by_a_submission.txt"
    if detect_isolation().sandboxed:
        assert not escaped.exists()
    escaped.unlink(missing_ok=True)


def test_corpus_reports_junit_feedback_and_header(graded_corpus):
    from xml.etree import ElementTree

    from labkit.class_grading import detect_isolation

    out = graded_corpus["out"]
    suites = ElementTree.parse(out.with_suffix(".xml")).getroot()
    assert len(suites.findall("testsuite")) == len(graded_corpus["expected"])
    correct = next(s for s in suites if s.get("name") == "correct")
    assert correct.get("failures") == "0" and correct.get("tests") == "4"
    feedback = out.parent / "report-feedback"
    assert len(list(feedback.glob("*.md"))) == len(graded_corpus["expected"])
    text = (feedback / "partly_wrong.md").read_text()
    assert "1/4 exercises passed" in text and "Hint:" in text
    summary = out.with_suffix(".md").read_text()
    assert detect_isolation().description in summary and "| correct | 4/4 |" in summary
    import os  # --jobs 2: the cores are shared, so each submission gets its share of threads
    assert f"{max(1, (os.cpu_count() or 1) // 2)} CPU thread(s) per submission" in summary
    assert graded_corpus["code"] == 0


def test_grade_class_refuses_bad_folders(tmp_path, capsys):
    from labkit.__main__ import main
    from labkit.class_grading import grade_class

    with pytest.raises(LabkitError, match="no .ipynb"):
        grade_class(CORPUS / "submissions", tmp_path, tmp_path / "r.csv")
    with pytest.raises(LabkitError, match="no student folders"):
        grade_class(tmp_path, CORPUS / "master", tmp_path / "r.csv")
    with pytest.raises(LabkitError, match=".csv"):
        grade_class(CORPUS / "submissions", CORPUS / "master", tmp_path / "r.txt")
    assert main(["grade", "a", "b", "--master", str(CORPUS / "master")]) == 2
    assert "one submissions folder" in capsys.readouterr().err


def test_without_a_sandbox_the_report_header_says_so(monkeypatch):
    import labkit.class_grading as cg

    monkeypatch.setattr(cg.shutil, "which", lambda tool: None)  # no unshare, no ip: no sandbox
    cg.detect_isolation.cache_clear()
    try:
        iso = cg.detect_isolation()
        assert not iso.sandboxed and "WITH network access" in iso.description
        assert iso.wrap(Path("/tmp/job")) == []
    finally:
        cg.detect_isolation.cache_clear()
