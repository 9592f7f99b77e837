"""How long `labkit grade` takes per notebook on this machine, and what that means for a class of 30, 100, 300.

    .venv/bin/python benchmarks/grading_scale.py --master tests/grading_corpus/master --students 8 --out /tmp/g
    .venv/bin/python benchmarks/grading_scale.py --master notebooks --notebooks 01_model_families --students 4 \\
        --out benchmarks/results/grading_scale

Builds a class of --students folders (half hand in the solved notebooks, half the student versions), grades it as
an instructor would (`labkit grade ... --jobs J`, sandbox as this machine allows) and reports the measured time per
notebook (each job's own clock: reading, running in its sandbox, deciding) and the wall time of the run. The
class-size table extrapolates from the measurement: wall = start-up + ceil(students x notebooks / jobs) x mean
time per notebook (jobs run side by side on the cores, one core each). Writes grading_scale.json and .md to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_class(master: Path, names: list[str] | None, students: int, root: Path) -> tuple[Path, Path]:
    import nbformat

    from labkit.grading import student_version

    masters = root / "master"
    masters.mkdir(parents=True)
    for path in sorted(master.glob("*.ipynb")):
        if names and path.stem not in names:
            continue
        shutil.copy(path, masters / path.name)
    submissions = root / "submissions"
    for i in range(students):
        folder = submissions / f"student{i:03d}"
        folder.mkdir(parents=True)
        for path in masters.glob("*.ipynb"):
            nb = nbformat.read(path, as_version=4)
            nbformat.write(nb if i % 2 == 0 else student_version(nb), folder / path.name)
    return masters, submissions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--master", type=Path, required=True, help="folder of master notebooks")
    parser.add_argument("--notebooks", nargs="*", help="only these masters (file stems)")
    parser.add_argument("--students", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=None, help="default: CPU cores")
    parser.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "none"])
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from labkit.grading.classrun import grade_class

    with tempfile.TemporaryDirectory(prefix="grading-scale-") as tmp:
        masters, submissions = build_class(args.master, args.notebooks, args.students, Path(tmp))
        started = time.monotonic()
        report = grade_class(submissions, masters, Path(tmp) / "out" / "report.csv", jobs=args.jobs,
                             cell_timeout=args.timeout, notebook_timeout=max(1200, args.timeout), sandbox=args.sandbox)
        wall = time.monotonic() - started
    result = report.result
    seconds = [g.seconds for g in result.grades]
    jobs = int(result.limits.split(" notebook(s) at once")[0].rsplit(", ", 1)[1])
    per_notebook = sum(seconds) / len(seconds)
    startup = max(0.0, wall - math.ceil(len(seconds) / jobs) * per_notebook)
    notebooks = len({g.notebook for g in result.grades})
    table = {n: startup + math.ceil(n * notebooks / jobs) * per_notebook for n in (30, 100, 300)}
    summary = {
        "machine": f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end",
        "isolation": result.isolation[0], "jobs": jobs, "notebooks_per_student": notebooks,
        "students": args.students, "graded_notebooks": len(seconds), "wall_s": round(wall, 1),
        "seconds_per_notebook": {"mean": round(per_notebook, 2), "min": round(min(seconds), 2),
                                 "max": round(max(seconds), 2)},
        "startup_s": round(startup, 1), "class_wall_s": {str(n): round(s) for n, s in table.items()},
        "statuses": {s: sum(r.status == s for g in result.grades for r in g.results)
                     for s in ("passed", "failed", "not reached", "missing")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grading_scale.json").write_text(json.dumps(summary, indent=1))
    lines = [f"# labkit grade: time per notebook ({summary['machine']})", "",
             f"- Graded {len(seconds)} notebook(s) ({notebooks} per student, {args.students} students, {jobs} at a "
             f"time) in {wall:.0f} s; {result.isolation[0].split(':')[0]}.",
             f"- Per notebook: mean {per_notebook:.1f} s (min {min(seconds):.1f}, max {max(seconds):.1f}); "
             f"start-up {startup:.0f} s.", "",
             "| students | wall time (estimated) |", "|---|---|"]
    lines += [f"| {n} | {s / 60:.0f} min ({s:.0f} s) |" for n, s in table.items()]
    (args.out / "grading_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
