"""Layer 4: `labkit grade` over the corpus of sample submissions (tests/grading_corpus), as an instructor runs it,
once with bubblewrap and once without a sandbox. Each sample, honest, broken or hostile, ends as the instructor
wants (build_corpus.EXPECTED), every report stays valid, and the machine is as it was.

One test per way of grading (not one per assertion), so pytest-xdist never grades the corpus twice in one way,
and the two ways run side by side on CI's two workers. Without a sandbox students run one at a time, so that run
grades the samples of issue 22's attacks (build_corpus.ISSUE_22) and a correct one; the others test what does not
depend on the sandbox."""

import csv
import os
import shutil
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

CORPUS = Path(__file__).resolve().parent / "grading_corpus"
sys.path.insert(0, str(CORPUS))

from build_corpus import EXPECTED, ISOLATION_WITNESSES, ISSUE_22, SKIPPED, add_special_entries  # noqa: E402

from labkit.grading.escape import csv_cell  # noqa: E402


def _forgers() -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "labkit-corpus-forger" in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            pass
    return found


def _grade(tmp_path: Path, sandbox: str, only: set[str] | None = None) -> dict:
    from labkit.__main__ import main

    master, submissions = tmp_path / "master", tmp_path / "submissions"
    shutil.copytree(CORPUS / "master", master)
    shutil.copytree(CORPUS / "submissions", submissions)
    add_special_entries(submissions, master)
    students = set(EXPECTED) if only is None else only
    for entry in submissions.iterdir():
        if entry.name not in students and entry.name not in SKIPPED:
            shutil.rmtree(entry)
    out = tmp_path / "grades" / "report.csv"
    core_pattern = Path("/proc/sys/kernel/core_pattern").read_bytes()
    started = time.monotonic()
    code = main(["grade", str(submissions), "--master", str(master), "--out", str(out), "--timeout", "15",
                 "--notebook-timeout", "120", "--jobs", "2", "--sandbox", sandbox])
    seconds = time.monotonic() - started
    print(f"graded the corpus ({len(students)} students, sandbox {sandbox}) in {seconds:.0f} s")
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {"code": code, "out": out, "rows": rows, "core_pattern": core_pattern, "master": master,
            "seconds": seconds, "students": students}


def _row(graded, student, exercise):
    """The CSV row of one sample's exercise; a sample this run did not grade reads as the expected text."""
    if student not in graded["students"]:
        return _Anything()
    return next(r for r in graded["rows"] if r["student"] == csv_cell(student) and r["exercise"] == exercise)


class _Anything(dict):
    def __getitem__(self, key):
        return _Contains()


class _Contains(str):
    def __contains__(self, item):
        return True

    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


def _check(graded: dict, sandboxed: bool) -> None:
    g = graded
    assert g["code"] == 0
    got: dict[str, dict[str, str]] = {}
    for row in g["rows"]:
        got.setdefault(row["student"], {})[row["exercise"]] = row["status"]
    expected = {csv_cell(k): v for k, v in EXPECTED.items() if k in g["students"]}
    if not sandboxed:  # without a sandbox an escape may work: their rows exist, whatever they say
        for name in ISOLATION_WITNESSES & g["students"]:
            assert set(got.pop(name)) == set(expected.pop(name))
    assert got == expected
    for row in g["rows"]:
        assert row["points"] == ("1" if row["status"] == "passed" else "0")
        if row["status"] in ("failed", "not reached") and "not graded" not in row["message"]:
            assert row["hint"], row

    # the reasons, as the instructor reads them
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
    built = _row(g, "string_built_names", "03.kv_cache_gib")["notes"]
    assert "changed what `labkit.load_config" in built and "setattr" in built and "__import__" in built
    assert "25 MB of output" in _row(g, "big_output", "02.gguf_quant")["notes"]
    for student, words in [("symlink_to_master", "symbolic link"), ("hardlink_to_master", "hard link"),
                           ("fifo_notebook", "FIFO"), ("deep_notebook", "nested more than 64"),
                           ("huge_notebook", "over the 50 MB limit"), ("corrupt", "not valid JSON")]:
        assert words in _row(g, student, "03.weights_gib")["message"] and "refused" in _row(
            g, student, "03.weights_gib")["message"], student
    assert "nbformat 3" in _row(g, "nbformat3", "02.gguf_quant")["notes"]
    assert "without cell ids" in _row(g, "no_cell_ids", "02.gguf_quant")["notes"]
    assert "matched by their content" in _row(g, "renumbered_ids", "02.gguf_quant")["notes"]
    two = _row(g, "two_copies", "03.weights_gib")
    assert two["graded_file"] == "corpus (1).ipynb" and "not graded: corpus.ipynb" in two["notes"]
    asked = _row(g, "expected_answers", "02.gguf_quant")
    assert "no answer yet" in asked["message"] and "called labkit's expected answer for 02.gguf_quant" in asked["notes"]
    assert "recorded 2 times" in _row(g, "forged_own_records", "02.gguf_quant")["notes"]
    fifo = _row(g, "records_fifo", "03.weights_gib")
    assert "no answer was recorded" in fifo["message"] and "FIFO" in fifo["notes"]
    assert "without an account" in _row(g, "kills_runner", "03.weights_gib")["message"]
    assert "OverflowError" in _row(g, "bad_answers", "03.kv_cache_gib")["message"]

    # the reports: valid whatever was printed, one feedback file per student, every folder accounted for
    out = g["out"]
    suites = ElementTree.parse(out.with_suffix(".xml")).getroot()
    assert len(suites.findall("testsuite")) == len(g["students"])
    correct = next(s for s in suites if s.get("name") == "correct")
    assert correct.get("failures") == "0" and correct.get("tests") == "4"
    feedback = list((out.parent / "report-feedback").glob("*.md"))
    assert len(feedback) == len(g["students"])
    for path in feedback:
        lines = path.read_text().splitlines()
        passed = int(lines[0].rsplit(": ", 1)[1].split("/")[0])
        assert sum(line.startswith("- ✅") for line in lines) == passed, path  # nothing forged a "passed" line
    summary = out.with_suffix(".md").read_text()
    assert "| correct | 4/4 |" in summary and "| pipe\\|name | 4/4 |" in summary
    assert sum(line.startswith("| ") for line in summary.splitlines()) == len(g["students"]) + 1
    from labkit.grading.escape import markdown

    for name, reason in SKIPPED.items():
        assert reason in next(line for line in summary.splitlines() if line.startswith(f"- {markdown(name)}:"))
    if sandboxed:
        assert "bubblewrap" in summary and "2 notebook(s) at once" in summary
    else:
        assert "NOT ISOLATED" in summary and "1 notebook(s) at once" in summary

    # the machine is as it was: no process left behind, nothing planted, the kernel's settings untouched
    assert _forgers() == [], "a submission's process outlived its grading"
    assert not list(Path("/dev").glob("labkit-corpus-*"))
    assert Path("/proc/sys/kernel/core_pattern").read_bytes() == g["core_pattern"]
    assert (g["master"] / "corpus.ipynb").read_text() == (CORPUS / "master" / "corpus.ipynb").read_text()
    import labkit

    assert not (Path(labkit.__file__).parent / "escaped_by_a_submission.txt").exists()


def test_the_corpus_in_bubblewrap(tmp_path):
    from labkit.grading import sandbox as sandboxes

    files = sandboxes.prepare_class_files(tmp_path / "probe", ())
    chosen = sandboxes.choose("auto", files)
    if chosen.kind != "bwrap":
        pytest.skip(f"no working bubblewrap ({chosen.description}); `make setup-dev` installs it as root")
    _check(_grade(tmp_path, "bwrap"), sandboxed=True)


def test_the_corpus_without_a_sandbox(tmp_path):
    _check(_grade(tmp_path, "none", only=ISSUE_22 | {"correct"}), sandboxed=False)


def test_the_corpus_covers_every_attack_of_issue_22():
    classes = {  # issue 22's list -> the samples that carry it
        "sees other students, the host's /proc, the grader's arguments": ["escape_attempts"],
        "/dev, /sys, /proc/sys writable": ["escape_attempts"],
        "forges records in another student's folder": ["forger"],
        "an answer whose float conversion fails": ["bad_answers"],
        "deeply nested JSON in its records": ["forged_own_records", "deep_notebook"],
        "its log or records replaced by a FIFO": ["records_fifo", "fifo_notebook"],
        "a cell of a million newlines": ["million_newlines"],
        "nbformat 4.0 without cell ids": ["no_cell_ids"],
        "a symlink to the master": ["symlink_to_master", "hardlink_to_master"],
        "the checkout's .git serves the masters": ["escape_attempts"],
        "labkit.check.exercises()[id] hands out the answer": ["expected_answers"],
        "names built from strings evade the scan": ["string_built_names"],
        "nbformat 3, re-numbered cell ids": ["nbformat3", "renumbered_ids"],
        "two copies in one folder": ["two_copies"],
        "folder names with |, =, a leading dot, x y next to x_y": ["pipe|name", '=HYPERLINK("evil")', ".dotted",
                                                                    "x y", "x_y"],
        "control characters in error text": ["control_chars"],
    }
    assert all(sample in EXPECTED for samples in classes.values() for sample in samples)
    assert os.path.isfile(CORPUS / "build_corpus.py")
