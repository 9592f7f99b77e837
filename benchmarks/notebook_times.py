"""Where the notebooks spend their time: every code cell's wall time, per notebook, in the current profile.

    .venv/bin/python benchmarks/notebook_times.py                    # all notebooks, 2 at a time, cpu profile
    .venv/bin/python benchmarks/notebook_times.py 04_quantization --student --top 15

`make test` runs each notebook twice on CI's 2 cores (as written, and its student version); this shows which
cells to make cheaper in the cpu profile. Prints the slowest cells and writes the times as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cell_seconds(cell) -> float | None:
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return None
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def time_notebook(path: str, student: bool) -> dict:
    import nbformat

    from labkit.grading import execute, student_version

    nb = nbformat.read(path, as_version=4)
    if student:
        nb = student_version(nb)
    t0 = time.perf_counter()
    execute(nb, cwd=Path(path).parent, timeout=1200)
    total = time.perf_counter() - t0
    cells = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            seconds = cell_seconds(cell)
            first = next((line for line in cell.source.splitlines() if line.strip() and not line.startswith("#")), "")
            errors = [o.get("ename") for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            cells.append({"cell": index, "seconds": seconds, "code": first[:90], "errors": errors})
    return {"notebook": Path(path).stem + (" (student)" if student else ""), "seconds": round(total, 1), "cells": cells}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", help="notebook stems (default: all)")
    ap.add_argument("--student", action="store_true", help="time the student versions instead")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--top", type=int, default=8, help="slowest cells shown per notebook")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "notebook_times.json")
    args = ap.parse_args()
    os.environ.setdefault("LABKIT_PROFILE", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    paths = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.notebooks:
        paths = [p for p in paths if p.stem in args.notebooks]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(time_notebook, map(str, paths), [args.student] * len(paths)))
    for r in results:
        print(f"\n{r['notebook']}: {r['seconds']:.0f} s")
        for c in sorted(r["cells"], key=lambda c: -(c["seconds"] or 0))[:args.top]:
            flag = f"  ({', '.join(c['errors'])})" if c["errors"] else ""
            print(f"  {c['seconds'] or 0:7.1f} s  cell {c['cell']:3}  {c['code']}{flag}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\n{sum(r['seconds'] for r in results):.0f} s of notebook time; cells in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
