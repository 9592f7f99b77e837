"""The whole course on a CUDA machine: every notebook in the `gpu` profile, then the benchmark scripts.

    make gpu-check                                   # on a GPU box with the course set up (make lab / make test)
    python benchmarks/gpu_check.py --out /tmp/gpu     # the same, by hand
    python benchmarks/gpu_check.py --out /tmp/gpu --only 03_vram_math vram_accuracy   # a subset

Each notebook runs alone under nbmake (LABKIT_PROFILE=gpu, offline) with a per-notebook time limit; each
benchmark runs in its own process with its own limit, its results written under --out/<name>/. Executed
notebooks land in --out/notebooks/. One failure never stops the rest: the summary table printed last says
what passed, what failed and how long each took, and --out/summary.json keeps it.

A machine that reaches no package index (the course's lent GPU) first needs the packages it lacks as
wheels: `python benchmarks/gpu_wheels.py` here, then carry `.whl/` there (see that script).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

# name -> (arguments after the script, time limit in s). Each writes JSON/MD under the folder given by {out}.
BENCHMARKS: dict[str, tuple[list[str], int]] = {
    "gpu_checks": (["--out", "{out}"], 600),
    "vram_accuracy": (["measure", "--out", "{out}", "--budget-s", "420"], 900),
    "decode_roofline": (["--out", "{out}"], 900),
    "quant_gpu": (["--out", "{out}"], 900),
    "kv_cache_gpu": (["--out", "{out}"], 900),
    "attention_gpu": (["--out", "{out}"], 900),
    "lora_gpu": (["--out", "{out}"], 900),
    "serving_gpu": (["--out", "{out}"], 600),
}


def libstdcxx_preload(env: dict) -> dict:
    """Preload the system libstdc++ where one exists. Seen on the H200 image (2026-12-01): with torch imported
    first, llama-cpp-python built there with CUDA (gcc 13 + nvcc 13) segfaults in llama_model::print_info while
    loading any GGUF, because a C++ stream symbol resolves to libggml-cuda's own copy; preloading libstdc++
    makes it resolve to the library's. Without it every notebook that loads the GGUF on the GPU dies."""
    for candidate in ("/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6"):
        if Path(candidate).exists() and candidate not in env.get("LD_PRELOAD", ""):
            env["LD_PRELOAD"] = ":".join(filter(None, [candidate, env.get("LD_PRELOAD")]))
            break
    return env


def run_step(kind: str, name: str, cmd: list[str], timeout: int, env: dict, log: Path) -> dict:
    t0 = time.perf_counter()
    print(f"▶ {kind} {name}: {' '.join(cmd)}", flush=True)
    with log.open("w") as fh:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout).returncode
            status = "passed" if rc == 0 else f"failed (rc {rc})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout} s"
    seconds = time.perf_counter() - t0
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    print(f"  {status} in {seconds:.0f} s" + ("" if status == "passed" else "\n  " + "\n  ".join(tail)), flush=True)
    return {"kind": kind, "name": name, "status": status, "seconds": round(seconds, 1), "log": str(log)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--only", nargs="*", default=None, help="notebook stems or benchmark names to run (default: all)")
    ap.add_argument("--skip-benchmarks", action="store_true")
    ap.add_argument("--skip-notebooks", action="store_true")
    ap.add_argument("--notebook-timeout", type=int, default=1200)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA GPU; on this machine run `make test` instead.", file=sys.stderr)
        return 2
    out = args.out.resolve()
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    env = dict(os.environ, LABKIT_PROFILE="gpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg",
               PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env = libstdcxx_preload(env)
    wanted = set(args.only) if args.only else None
    device = f"{torch.cuda.get_device_name()} · torch {torch.__version__} · CUDA {torch.version.cuda}"
    print(f"gpu-check on {device}", flush=True)
    rows = []
    if not args.skip_notebooks:
        for nb in NOTEBOOKS:
            if wanted and nb.stem not in wanted:
                continue
            executed = out / "notebooks" / nb.name
            shutil.copy(nb, executed)  # nbmake --overwrite writes the outputs into this copy, not the source
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbmake", "--overwrite",
                   f"--nbmake-timeout={args.notebook_timeout}", str(executed)]
            rows.append(run_step("notebook", nb.stem, cmd, args.notebook_timeout + 60, env,
                                 out / "logs" / f"{nb.stem}.log"))
    if not args.skip_benchmarks:
        for name, (bench_args, limit) in BENCHMARKS.items():
            script = ROOT / "benchmarks" / f"{name}.py"
            if (wanted and name not in wanted) or not script.exists():
                continue
            folder = out / name
            folder.mkdir(exist_ok=True)
            cmd = [sys.executable, str(script), *[a.format(out=folder) for a in bench_args]]
            rows.append(run_step("benchmark", name, cmd, limit, env, out / "logs" / f"{name}.log"))
    summary = {"device": device, "date": time.strftime("%Y-%m-%d"), "steps": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{'step':32} {'status':28} {'seconds':>8}")
    for r in rows:
        print(f"{r['kind'] + ' ' + r['name']:32} {r['status']:28} {r['seconds']:8.0f}")
    failed = [r for r in rows if r["status"] != "passed"]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
