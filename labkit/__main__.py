"""Command line: `labkit doctor`, `labkit student NOTEBOOK...`, `labkit grade NOTEBOOK...`."""

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
    gra = sub.add_parser("grade", help="execute notebooks and report their checks")
    gra.add_argument("notebooks", nargs="+", type=Path)
    gra.add_argument("--timeout", type=int, default=600, help="seconds per cell")
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
    from .grading import grade

    failed = 0
    for path in args.notebooks:
        report = grade(path, timeout=args.timeout)
        print(report)
        failed += bool(report.failed or report.not_reached or report.broken_cells)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
