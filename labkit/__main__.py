"""Command line: `labkit doctor`, `labkit student NOTEBOOK...`, `labkit paired NOTEBOOK...` (each exercise run
as the student gets it, then solved: for `pytest --nbmake`), `labkit grade NOTEBOOK...` (your own notebooks),
`labkit grade SUBMISSIONS_DIR --master NOTEBOOKS_DIR --out REPORT.csv` (a class; `--shard K/N` for a part of it)
and `labkit grade --merge RESULTS.json... --out REPORT.csv` (the parts into one report)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labkit", description="LLM Field Lab helpers")
    sub = parser.add_subparsers(dest="command", required=True)
    doc = sub.add_parser("doctor", help="check versions, hardware, profile and the bundled model")
    doc.add_argument("--quiet", action="store_true", help="print only warnings and failures")
    doc.add_argument("--offline", action="store_true", help="skip the online probe")
    stu = sub.add_parser("student", help="write student versions (solutions stripped)")
    stu.add_argument("notebooks", nargs="+", type=Path)
    stu.add_argument("-o", "--output", type=Path, default=Path("student"))
    pai = sub.add_parser("paired", help="write paired versions: each exercise as the student gets it (its check must "
                                        "fail with its hint), then solved (it must pass); run them with pytest --nbmake")
    pai.add_argument("notebooks", nargs="+", type=Path)
    pai.add_argument("-o", "--output", type=Path, default=Path("paired"))
    gra = sub.add_parser("grade", help="execute notebooks and report their checks; with --master, grade a class",
                         description="labkit grade NOTEBOOK...  runs your notebooks and reports each check. "
                                     "labkit grade SUBMISSIONS_DIR --master NOTEBOOKS_DIR --out REPORT.csv  grades "
                                     "a class: one folder per student, each submission run in a sandbox of its own "
                                     "(bubblewrap), graded against the master's checks (see docs/instructors.md). "
                                     "labkit grade --merge RESULTS.json... --out REPORT.csv  joins the results of "
                                     "shards (--shard K/N) into one report.")
    gra.add_argument("notebooks", nargs="+", type=Path,
                     help="notebooks; with --master, the submissions folder; with --merge, the shards' results files")
    gra.add_argument("--timeout", type=int, default=None,
                     help="seconds per cell (default 600 for your notebooks, 120 for a class)")
    gra.add_argument("--master", type=Path, help="folder of master notebooks (the solutions): grade a class")
    gra.add_argument("--out", type=Path, default=Path("grades.csv"), help="class report CSV (default grades.csv)")
    gra.add_argument("--notebook-timeout", type=int, default=600,
                     help="seconds per student and notebook, the grader's own steps included (class grading)")
    gra.add_argument("--jobs", type=int, default=None,
                     help="notebooks graded at once in their sandboxes (default: CPU cores; one without a sandbox)")
    gra.add_argument("--sandbox", choices=["auto", "bwrap", "none"], default=None,
                     help="auto (default, or $LABKIT_SANDBOX): bubblewrap where it works; bwrap: refuse to grade "
                          "without it; none: plain processes, one at a time")
    gra.add_argument("--shard", metavar="K/N", help="grade only the K-th of N parts of the class (merge them with "
                                                    "--merge); writes REPORT.shard-K-of-N.json")
    gra.add_argument("--merge", action="store_true", help="join the shards' results files into one report")
    args = parser.parse_args(argv)

    if args.command == "doctor":
        from .doctor import doctor

        return doctor(check_online=not args.offline, quiet=args.quiet)
    if args.command == "student":
        import nbformat

        from .grading import student_version

        args.output.mkdir(parents=True, exist_ok=True)
        for path in args.notebooks:
            target = args.output / path.name
            nbformat.write(student_version(nbformat.read(path, as_version=4)), target)
            print(f"wrote {target}")
        return 0
    if args.command == "paired":
        import nbformat

        from .grading import paired_version, solution_leaks

        args.output.mkdir(parents=True, exist_ok=True)
        leaks = 0
        for path in args.notebooks:
            nb = nbformat.read(path, as_version=4)
            for problem in solution_leaks(nb):
                print(f"{path.name}: {problem}", file=sys.stderr)
                leaks += 1
            target = args.output / path.name
            nbformat.write(paired_version(nb), target)
            print(f"wrote {target}")
        return 1 if leaks else 0
    if args.master is not None or args.merge:
        from .errors import LabkitError, MissingPackageError

        try:
            return _grade_class(args)
        except (LabkitError, MissingPackageError) as err:
            print(f"labkit grade: {err}", file=sys.stderr)
            return 2
    from .grading import grade

    failed = 0
    for path in args.notebooks:
        report = grade(path, timeout=args.timeout or 600)
        print(report)
        failed += bool(report.failed or report.not_reached or report.broken_cells)
    return 1 if failed else 0


def _grade_class(args) -> int:
    from .errors import LabkitError
    from .grading.classrun import grade_class, merge_shards

    if args.merge:
        if args.master is not None or args.shard:
            raise LabkitError("--merge takes only the shards' results files and --out")
        report = merge_shards(args.notebooks, args.out)
    else:
        if len(args.notebooks) != 1:
            raise LabkitError("with --master, give one submissions folder (one sub-folder per student)")
        try:
            import ipykernel  # noqa: F401
            import jupyter_client  # noqa: F401
        except ImportError as err:
            from .errors import MissingPackageError

            raise MissingPackageError(err.name or "ipykernel", "Grading a class (it runs each submission in a "
                                      "Jupyter kernel)", "lab") from err
        report = grade_class(args.notebooks[0], args.master, args.out, jobs=args.jobs,
                             cell_timeout=args.timeout or 120, notebook_timeout=args.notebook_timeout,
                             sandbox=args.sandbox, shard=args.shard)
    if report.summary_path is None:
        graded = len(report.result.students())
        print(f"shard {report.result.shard}: graded {graded} student(s) in {report.result.seconds:.0f} s; "
              f"wrote {report.results_path}. Merge every shard with: labkit grade --merge "
              f"{report.results_path.parent}/{args.out.stem}.shard-*-of-*.json --out {args.out}")
        return 0
    print(report.summary_path.read_text(encoding="utf-8"))
    print(f"wrote {report.csv_path}, {report.junit_path}, {report.summary_path}, {report.results_path} and "
          f"{report.feedback_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
