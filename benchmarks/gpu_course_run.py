"""The whole course on one CUDA machine, in one uninterrupted run: every notebook at full size and capped to the
memory of smaller cards (LABKIT_GPU_MEMORY: 15 GiB, a T4's worth; 7.5 GiB, an 8 GB laptop card's), then the
benchmark scripts; each step's time and peak GPU memory recorded, the summary printed last.

    make gpu-check                                                    # everything (the defaults below)
    python benchmarks/gpu_course_run.py --out outputs/gpu-course-run  # the same
    python benchmarks/gpu_course_run.py --out /tmp/g --caps 15GiB 7.5GiB --jobs 6 --benchmarks none   # capped only
    python benchmarks/gpu_course_run.py --out /tmp/g --caps full --notebooks 05 06 --benchmarks none  # a subset
    python benchmarks/gpu_course_run.py --out /tmp/g --caps none --benchmarks gpu_labkit_api llama_cpp_offload

How it runs:
- Notebooks: each alone under nbmake (LABKIT_PROFILE=gpu, offline), as written (solutions in), with a time limit.
  Capped runs hold torch to the cap (labkit.hardware.cap_torch_cuda_memory) and size everything from it, so a
  capped run on an 80 GB card behaves as that smaller card; several capped runs share the card at once
  (--jobs) as long as their caps add up to at most 90% of it. A full-size run always has the card to itself.
- Peak GPU memory per notebook: torch's peak (max_memory_reserved, written by the kernel itself at exit through
  LABKIT_GPU_REPORT) and, for a run alone on the card, the device's peak used memory sampled by nvidia-smi every
  0.5 s (the CUDA context and llama.cpp's buffers included; "n/a" for runs that shared the card). A run whose torch
  peak passes its cap, or whose kernel met CUDA out-of-memory errors (torch counts them, caught ones too: notebook
  06's sweep reports naive attention running out of memory as a result), is flagged in the summary.
- Benchmarks: each script in its own process with its own limit, results under --out/<name>/.
- Progress: --out/summary.json is rewritten after every step; --resume skips the steps it lists as passed, so a run
  cut short (a lease ending) goes on where it stopped. Executed notebooks and logs land in --out/notebooks and
  --out/logs; --out/summary.md is the table to commit (datasets/results/gpu_course_run.json + .md).

A machine that reaches no package index (the course's lent GPU) first needs the packages it lacks as wheels:
`python benchmarks/gpu_wheels.py` here, then carry `.gpu-wheels/` there and run `bash benchmarks/gpu_setup.sh`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
GIB = 1024**3
DEFAULT_CAPS = ["full", "15GiB", "7.5GiB"]
SHARE_OF_CARD = 0.9  # capped runs at once may claim this share of the card together

# name -> (arguments after the script, time limit in s). Each writes JSON/MD under the folder given by {out}.
BENCHMARKS: dict[str, tuple[list[str], int]] = {
    "gpu_labkit_api": (["--out", "{out}"], 600),
    "llama_cpp_offload": (["--out", "{out}"], 600),
    "tensor_parallel_check": (["--out", "{out}"], 600),
    "vram_accuracy": (["measure", "--out", "{out}", "--budget-s", "420"], 900),
    "decode_roofline": (["--out", "{out}"], 900),
    "quant_gpu": (["--out", "{out}"], 900),
    "kv_cache_gpu": (["--out", "{out}"], 900),
    "attention_gpu": (["--out", "{out}"], 900),
    "lora_gpu": (["--out", "{out}"], 900),
    "serving_gpu": (["--out", "{out}"], 600),
}


@dataclass
class Step:
    kind: str  # "notebook" or "benchmark"
    name: str
    cap: str = "full"  # "full" or a LABKIT_GPU_MEMORY value
    status: str = "not run"
    seconds: float | None = None
    torch_peak_gib: float | None = None  # the kernel's torch.cuda.max_memory_reserved
    device_peak_gib: float | None = None  # nvidia-smi's used memory, peak less the level before the step
    out_of_memory_errors: int | None = None  # CUDA out-of-memory errors in the kernel (torch's count; caught ones too)
    flags: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}:{self.cap}"


def parse_cap(cap: str) -> int | None:
    """Bytes of a cap ("15GiB", "7.5GiB", "16GB", a bare number of GiB), None for "full"."""
    if cap == "full":
        return None
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(gib|gb|mib|mb)?", cap.strip().lower())
    if not found:
        raise SystemExit(f"--caps takes 'full' or amounts such as 15GiB, 7.5GiB; got {cap!r}")
    return int(float(found.group(1)) * {"gib": GIB, "gb": 10**9, "mib": 2**20, "mb": 10**6}[found.group(2) or "gib"])


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


def device_used_bytes() -> int | None:
    """GPU 0's used memory as the driver counts it (every process, contexts included), or None without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10)
        return int(float(out.stdout.strip().splitlines()[0]) * 2**20)
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


class PeakSampler:
    """Samples the device's used memory while a step runs alone on the card."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.peak, self.base = every_s, None, device_used_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            used = device_used_bytes()
            if used is not None:
                self.peak = max(self.peak or 0, used)
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gib(self) -> float | None:
        if self.peak is None or self.base is None:
            return None
        return round(max(0, self.peak - self.base) / GIB, 2)


def run_notebook(step: Step, out: Path, env: dict, timeout: int, threads: int, alone: bool) -> Step:
    executed = out / "notebooks" / step.cap / f"{step.name}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "notebooks" / f"{step.name}.ipynb", executed)  # nbmake --overwrite writes outputs into the copy
    report = out / "logs" / f"{step.name}.{step.cap}.gpu.jsonl"
    report.unlink(missing_ok=True)
    env = dict(env, LABKIT_GPU_REPORT=str(report), LABKIT_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    env.pop("LABKIT_GPU_MEMORY", None)
    if step.cap != "full":
        env["LABKIT_GPU_MEMORY"] = step.cap
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbmake", "--overwrite",
           f"--nbmake-timeout={timeout}", str(executed)]
    sampler = PeakSampler() if alone else None
    if sampler:
        sampler.__enter__()
    try:
        _execute(step, cmd, timeout + 60, env, out / "logs" / f"{step.name}.{step.cap}.log")
    finally:
        if sampler:
            sampler.__exit__()
            step.device_peak_gib = sampler.peak_gib
    peaks = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    if peaks:
        step.torch_peak_gib = round(max(p["max_reserved_bytes"] for p in peaks) / GIB, 2)
        step.out_of_memory_errors = sum(p.get("out_of_memory_errors", 0) for p in peaks)
    cap = parse_cap(step.cap)
    if cap and step.torch_peak_gib and step.torch_peak_gib * GIB > cap:
        step.flags.append(f"torch peak {step.torch_peak_gib} GiB is over the {step.cap} cap")
    if step.out_of_memory_errors:  # e.g. notebook 06's sweep, which reports naive attention running out of memory
        step.flags.append(f"{step.out_of_memory_errors} CUDA out-of-memory error(s), caught by the notebook")
    return step


def run_benchmark(step: Step, out: Path, env: dict) -> Step:
    args, limit = BENCHMARKS[step.name]
    folder = out / step.name
    folder.mkdir(exist_ok=True)
    cmd = [sys.executable, str(ROOT / "benchmarks" / f"{step.name}.py"), *[a.format(out=folder) for a in args]]
    with PeakSampler() as sampler:
        _execute(step, cmd, limit, env, out / "logs" / f"{step.name}.log")
    step.device_peak_gib = sampler.peak_gib
    try:  # a script that could not run here (tensor_parallel_check with one GPU) says so in its result
        result = json.loads((folder / f"{step.name}.json").read_text())
        if step.status == "passed" and str(result.get("status", "")).startswith("skipped"):
            step.status = f"skipped: {result.get('reason', '')}"[:60]
    except (OSError, ValueError, AttributeError):
        pass
    return step


def _execute(step: Step, cmd: list[str], timeout: int, env: dict, log: Path) -> None:
    t0 = time.perf_counter()
    step.log = str(log)
    with log.open("w") as fh:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout).returncode
            step.status = "passed" if rc == 0 else f"failed (rc {rc})"
        except subprocess.TimeoutExpired:
            step.status = f"timed out after {timeout} s"
    step.seconds = round(time.perf_counter() - t0, 1)


def save(out: Path, header: dict, steps: list[Step]) -> None:
    summary = {**header, "updated": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": [asdict(s) for s in steps]}
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "summary.json")
    (out / "summary.md").write_text(markdown(header, steps))


def markdown(header: dict, steps: list[Step]) -> str:
    lines = [f"# The course on {header['device']}", "",
             f"{header['date']} · `{header['command']}`", "",
             "| step | memory | status | seconds | torch peak GiB | device peak GiB | notes |",
             "|---|---|---|---:|---:|---:|---|"]
    for s in steps:
        def num(x):
            return "n/a" if x is None else f"{x:g}"

        lines.append(f"| {s.kind} {s.name} | {s.cap} | {s.status} | {num(s.seconds)} | {num(s.torch_peak_gib)} | "
                     f"{num(s.device_peak_gib)} | {'; '.join(s.flags)} |")
    ran = [s for s in steps if s.status != "not run"]
    passed = [s for s in ran if s.status.startswith(("passed", "skipped"))]
    lines += ["", f"{len(passed)} of {len(ran)} steps passed; {len(steps) - len(ran)} not run."]
    return "\n".join(lines) + "\n"


def print_summary(steps: list[Step]) -> None:
    print(f"\n{'step':34} {'memory':7} {'status':26} {'s':>6} {'torch GiB':>9} {'device GiB':>10}  notes")
    for s in steps:
        def num(x, fmt):
            return "n/a" if x is None else format(x, fmt)

        print(f"{s.kind + ' ' + s.name:34} {s.cap:7} {s.status:26} {num(s.seconds, '6.0f'):>6} "
              f"{num(s.torch_peak_gib, '9.2f'):>9} {num(s.device_peak_gib, '10.2f'):>10}  {'; '.join(s.flags)}")
    ran = [s for s in steps if s.status != "not run"]
    failed = [s for s in ran if not s.status.startswith(("passed", "skipped"))]
    print(f"{len(ran) - len(failed)} passed, {len(failed)} failed" + (f", {len(steps) - len(ran)} not run"
                                                                        if len(ran) < len(steps) else ""))


def select_notebooks(wanted: list[str] | None) -> list[str]:
    stems = [p.stem for p in NOTEBOOKS]
    if not wanted:
        return stems
    chosen = [s for s in stems if any(s == w or s.startswith(w + "_") or s.startswith(w) for w in wanted)]
    unknown = [w for w in wanted if not any(s.startswith(w) for s in stems)]
    if unknown:
        raise SystemExit(f"--notebooks: no notebook {unknown}; there are {stems}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--caps", nargs="+", default=DEFAULT_CAPS,
                    help="memory to run the notebooks with: 'full' and/or LABKIT_GPU_MEMORY values; 'none' for no "
                         "notebooks (default: full 15GiB 7.5GiB)")
    ap.add_argument("--notebooks", nargs="*", default=None, help="notebook names or number prefixes (default: all)")
    ap.add_argument("--benchmarks", nargs="*", default=["all"],
                    help=f"benchmark scripts to run after the notebooks: 'all', 'none' or names of {list(BENCHMARKS)}")
    ap.add_argument("--jobs", type=int, default=1, help="capped notebook runs at once on the card (default 1)")
    ap.add_argument("--notebook-timeout", type=int, default=1200)
    ap.add_argument("--resume", action="store_true", help="skip steps that --out/summary.json lists as passed")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="test this script on a machine without CUDA: cpu profile, an 80 GiB card pretended")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("gpu_course_run.py needs a CUDA GPU; on this machine run `make test` instead.", file=sys.stderr)
        return 2
    caps = [] if args.caps == ["none"] else args.caps
    for cap in caps:
        parse_cap(cap)
    names = [] if args.benchmarks == ["none"] else list(BENCHMARKS) if args.benchmarks == ["all"] else args.benchmarks
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"--benchmarks: unknown {unknown}; known: {list(BENCHMARKS)}")
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    if args.cpu_smoke:
        card, device = 80 * GIB, f"CPU smoke test (no GPU; an 80 GiB card pretended) · torch {torch.__version__}"
    else:
        card = torch.cuda.get_device_properties(0).total_memory
        device = (f"{torch.cuda.get_device_name()} ({card / GIB:.1f} GiB) x{torch.cuda.device_count()} · torch "
                  f"{torch.__version__} · CUDA {torch.version.cuda}")
    header = {"device": device, "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/gpu_course_run.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    env = dict(os.environ, LABKIT_PROFILE="gpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg",
               PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env = libstdcxx_preload(env)
    if args.cpu_smoke:
        env["LABKIT_PROFILE"] = "cpu"
    del torch  # the steps run in their own processes; this one only schedules and samples

    notebooks = select_notebooks(args.notebooks)
    # capped first (smallest cap first: the new, cheap runs), then full size, then the benchmarks
    ordered_caps = sorted(caps, key=lambda c: (c == "full", parse_cap(c) or 0))
    steps = [Step("notebook", nb, cap) for cap in ordered_caps for nb in notebooks]
    steps += [Step("benchmark", name) for name in names]
    done: dict[str, dict] = {}
    if args.resume and (out / "summary.json").exists():
        fields = Step.__dataclass_fields__
        before = [Step(**{k: v for k, v in s.items() if k in fields})
                  for s in json.loads((out / "summary.json").read_text())["steps"]]
        done = {s.key: s for s in before if s.status.startswith(("passed", "skipped"))}
        planned = {s.key for s in steps}
        steps = [s for s in before if s.key not in planned] + [done.get(s.key, s) for s in steps]  # keep earlier rows
    print(f"gpu course run on {device}: {len(steps)} steps ({len(done)} already passed)", flush=True)
    save(out, header, steps)

    cores = os.cpu_count() or 1
    todo = [s for s in steps if s.status == "not run" and s.kind == "notebook"]
    capped = [s for s in todo if s.cap != "full"]
    lock = threading.Lock()

    def finish(step: Step) -> None:
        with lock:
            print(f"  {step.kind} {step.name} [{step.cap}]: {step.status} in {step.seconds:.0f} s"
                  + (f" · torch peak {step.torch_peak_gib} GiB" if step.torch_peak_gib is not None else "")
                  + (f" · {'; '.join(step.flags)}" if step.flags else ""), flush=True)
            save(out, header, steps)

    # capped runs share the card while their caps fit SHARE_OF_CARD of it
    jobs = max(1, args.jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict = {}
        pending = list(capped)
        while pending or running:
            claimed = sum(parse_cap(s.cap) for s in running.values())
            startable = [s for s in pending if claimed + parse_cap(s.cap) <= SHARE_OF_CARD * card]
            if not running and not startable:  # a cap near the card's size: it runs alone
                startable = pending[:1]
            while startable and len(running) < jobs:
                s = startable.pop(0)
                pending.remove(s)
                claimed += parse_cap(s.cap)
                alone = jobs == 1
                print(f"▶ notebook {s.name} [{s.cap}]", flush=True)
                running[pool.submit(run_notebook, s, out, env, args.notebook_timeout, max(1, cores // jobs),
                                    alone)] = s
                startable = [p for p in pending if claimed + parse_cap(p.cap) <= SHARE_OF_CARD * card]
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                finish(running.pop(f))
    for s in [s for s in todo if s.cap == "full"]:  # a full-size run has the card to itself
        print(f"▶ notebook {s.name} [full]", flush=True)
        finish(run_notebook(s, out, env, args.notebook_timeout, cores, alone=True))
    for s in [s for s in steps if s.status == "not run" and s.kind == "benchmark"]:
        if not (ROOT / "benchmarks" / f"{s.name}.py").exists():
            s.status = "skipped: no such script"
            continue
        print(f"▶ benchmark {s.name}", flush=True)
        finish(run_benchmark(s, out, env))
    save(out, header, steps)
    print_summary(steps)
    return 0 if all(s.status.startswith(("passed", "skipped")) for s in steps) else 1  # flags are reported, not failed


if __name__ == "__main__":
    sys.exit(main())
