"""labkit.grading.classrun: a job that hangs or crashes costs only its own row; shards merge into one report."""

import csv
import json
import os
import time
from pathlib import Path

import pytest

from labkit.__main__ import main
from labkit.errors import LabkitError
from labkit.grading.classrun import grade_class, merge_shards, run_contained
from labkit.grading.job import JobSpec
from labkit.grading.sandbox import ClassFiles, Sandbox

CORPUS = Path(__file__).resolve().parent / "grading_corpus"


# jobs the class run forks, standing in for the grader's own steps going wrong (module level: picklable)
def _hangs(spec, writer):
    Path(spec.job_dir).mkdir(parents=True, exist_ok=True)
    (Path(spec.job_dir) / "pid").write_text(str(os.getpid()))
    time.sleep(3600)


def _crashes(spec, writer):
    os._exit(3)


def _answers_garbage(spec, writer):
    writer.send_bytes(b"{not json")


def _spec(tmp_path, limit=1.0):
    files = ClassFiles(tmp_path, tmp_path, tmp_path, [])
    return JobSpec("ada", tmp_path, CORPUS / "master" / "corpus.ipynb", tmp_path / "job", Sandbox("none", ""),
                   files, 10, limit, 1)


def test_a_job_that_hangs_is_stopped_at_its_limit_and_gets_a_row(tmp_path):
    import psutil

    started = time.monotonic()
    grade = run_contained(_spec(tmp_path), ["ex.a", "ex.b"], job=_hangs, slack=1.0)
    assert time.monotonic() - started < 60
    assert [r.status for r in grade.results] == ["failed", "failed"]
    assert "longer than the 1 s limit" in grade.results[0].message and grade.student == "ada"
    pid = int((tmp_path / "job" / "pid").read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("job, words", [(_crashes, "ended unexpectedly (exit code 3)"),
                                        (_answers_garbage, "could not be read")])
def test_a_job_that_crashes_gets_a_row(tmp_path, job, words):
    grade = run_contained(_spec(tmp_path, limit=60), ["ex.a"], job=job)
    assert grade.results[0].status == "failed" and words in grade.results[0].message


@pytest.fixture
def small_class(tmp_path):
    """Students whose grading needs no kernel: nothing handed in, a corrupt notebook, a link to the master."""
    subs = tmp_path / "submissions"
    for name in ("ann", "bob", "cat", "dan", "eve"):
        (subs / name).mkdir(parents=True)
    (subs / "bob" / "corpus.ipynb").write_text("{ not json")
    (subs / "cat" / "corpus.ipynb").symlink_to(CORPUS / "master" / "corpus.ipynb")
    (subs / "stray.txt").write_text("")
    return subs


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return sorted((r["student"], r["exercise"], r["status"], r["message"]) for r in csv.DictReader(f))


def test_shards_merge_into_the_whole_class_report(small_class, tmp_path, capsys):
    master = str(CORPUS / "master")
    out = tmp_path / "out" / "report.csv"
    for k in (1, 2, 3):
        assert main(["grade", str(small_class), "--master", master, "--out", str(out), "--shard", f"{k}/3",
                     "--sandbox", "none"]) == 0
    assert "Merge every shard with" in capsys.readouterr().out
    shards = sorted(out.parent.glob("report.shard-*-of-3.json"))
    assert len(shards) == 3 and not out.exists()
    graded = [g["student"] for s in shards for g in json.loads(s.read_text())["grades"]]
    assert sorted(graded) == ["ann", "bob", "cat", "dan", "eve"]  # each student in exactly one shard

    assert main(["grade", "--merge", *map(str, shards), "--out", str(out)]) == 0
    whole = tmp_path / "whole" / "report.csv"
    grade_class(small_class, master, whole, sandbox="none", progress=False)
    assert _rows(out) == _rows(whole)
    summary = out.with_suffix(".md").read_text()
    assert summary.count("stray.txt") == 1 and "(the longest of 3 shards)" in summary
    assert len(list((out.parent / "report-feedback").iterdir())) == 5
    messages = {r[0]: r[3] for r in _rows(out)}
    assert "not handed in" in messages["ann"] and "not valid JSON" in messages["bob"]
    assert "symbolic link" in messages["cat"]


def test_merge_refuses_shards_that_do_not_make_one_class(small_class, tmp_path, capsys):
    master = str(CORPUS / "master")
    out = tmp_path / "report.csv"
    for k in (1, 2):
        main(["grade", str(small_class), "--master", master, "--out", str(out), "--shard", f"{k}/2",
              "--sandbox", "none"])
    one, two = sorted(tmp_path.glob("report.shard-*.json"))
    with pytest.raises(LabkitError, match="missing"):
        merge_shards([one], out)
    with pytest.raises(LabkitError, match="repeated"):
        merge_shards([one, one], out)
    (small_class / "zed").mkdir()  # the class changed between shards
    main(["grade", str(small_class), "--master", master, "--out", str(tmp_path / "b.csv"), "--shard", "2/2",
          "--sandbox", "none"])
    with pytest.raises(LabkitError, match="different classes"):
        merge_shards([one, tmp_path / "b.shard-2-of-2.json"], out)
    assert main(["grade", "--merge", str(tmp_path / "nope.json"), "--out", str(out)]) == 2
    assert "not a shard's results file" in capsys.readouterr().err


def test_bad_arguments_are_refused_with_what_is_accepted(small_class, tmp_path, capsys):
    master = CORPUS / "master"
    with pytest.raises(LabkitError, match="no .ipynb"):
        grade_class(small_class, tmp_path, tmp_path / "r.csv")
    with pytest.raises(LabkitError, match="not a folder"):
        grade_class(tmp_path / "missing", master, tmp_path / "r.csv")
    with pytest.raises(LabkitError, match=".csv"):
        grade_class(small_class, master, tmp_path / "r.txt")
    with pytest.raises(LabkitError, match="K/N"):
        grade_class(small_class, master, tmp_path / "r.csv", shard="3/2")
    assert main(["grade", "a", "b", "--master", str(master)]) == 2
    assert "one submissions folder" in capsys.readouterr().err
