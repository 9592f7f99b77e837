"""labkit.grading.seal: the labkit a graded submission runs with holds no expected answers, and says when asked."""

import json
import os
import subprocess
import sys

from labkit.grading.seal import sealed_source

MODULE = '''
from .check import exercise, validator

_SEALED = False


@exercise("t.one", hint="h", slips={"a slip": lambda expected, **_: expected * 2})
def _expected_one(x: int) -> int:
    return SECRET * x


@validator("t.two", hint="h")
def _validate_two(answer, limit=3):
    return None if answer < limit else "too big"


def public(x):
    return x + 1
'''


def test_expected_answers_are_replaced_and_slips_dropped():
    text, sealed = sealed_source(MODULE)
    assert sealed == ["t.one", "t.two"]
    assert "SECRET" not in text and "too big" not in text and "a slip" not in text
    assert "refuse('t.one')" in text and "refuse('t.two')" in text
    assert "return x + 1" in text and "_SEALED = True" in text


def test_every_registered_exercise_refuses_in_the_sealed_copy(tmp_path):
    """The real labkit, sealed: each exercise's expected answer or validator raises and leaves an event."""
    from pathlib import Path

    import labkit
    from labkit.check import exercises
    from labkit.grading.seal import build_sealed_copy
    from labkit.paths import datasets_dir

    copy, _, sealed = build_sealed_copy(Path(labkit.__file__).parent, tmp_path / "sealed")
    labkits = sorted(i for i, ex in exercises().items() if (ex.expected or ex.validate).__module__.startswith("labkit."))
    assert sorted(set(sealed)) == labkits  # (tests register exercises of their own in this process)
    events = tmp_path / "events.jsonl"
    probe = f"""
import labkit, labkit.check
from labkit.check import exercises
assert labkit.__file__.startswith({str(copy)!r}), labkit.__file__
refused = 0
for ex in exercises().values():
    try:
        (ex.expected or ex.validate)(1, 2)
    except labkit.LabkitError as err:
        refused += "not available while a submission is graded" in str(err)
labkit.check("03.weights_gib", 123.0, parameters=1, dtype="int8")  # a self-check: no verdict, no error
print(refused, len(exercises()))
"""
    env = {**os.environ, "PYTHONPATH": str(copy.parent), "LABKIT_DATASETS": str(datasets_dir()),
           "LABKIT_GRADING_EVENTS": str(events)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    refused, total = map(int, done.stdout.split()[-2:])
    assert refused == total == len(labkits)
    assert "the grader checks this answer after the run" in done.stdout
    logged = [json.loads(line)["exercise"] for line in events.read_text().splitlines()]
    assert sorted(logged) == labkits


def test_data_folders_are_left_to_be_mounted(tmp_path):
    """A labkit installed from its wheel holds its datasets inside the package: not copied, mounted back."""
    from labkit.grading import sandbox as sandboxes
    from labkit.grading.seal import build_sealed_copy

    package = tmp_path / "site-packages" / "labkit"
    (package / "datasets" / "configs").mkdir(parents=True)
    (package / "datasets" / "configs" / "a.json").write_text("{}")
    (package / "grading").mkdir()
    (package / "__init__.py").write_text("x = 1\n")
    (package / "grading" / "__init__.py").write_text("")
    (package / "tested_versions.txt").write_text("torch==2\n")
    copy, data, _ = build_sealed_copy(package, tmp_path / "sealed")
    assert data == [(package / "datasets", copy / "datasets")] and not any((copy / "datasets").iterdir())
    assert (copy / "tested_versions.txt").read_text() == "torch==2\n" and (copy / "grading" / "__init__.py").exists()
    files = sandboxes.ClassFiles(tmp_path, copy, package, data)
    argv = sandboxes.command(sandboxes.Sandbox("bwrap", ""), files, {})
    binds = [argv[i + 1:i + 3] for i, a in enumerate(argv) if a == "--ro-bind"]
    assert [str(copy), str(package)] in binds and [str(package / "datasets"), str(package / "datasets")] in binds
    assert binds.index([str(copy), str(package)]) < binds.index([str(package / "datasets"), str(package / "datasets")])
