"""Notebook 06's GPU measurements: naive vs tiled vs every SDPA backend vs the course's Triton kernel.

    python benchmarks/attention_gpu.py --out /tmp/attention        # needs CUDA; about 3 minutes on an H100/H200
    python benchmarks/attention_gpu.py --out /tmp/a --tiny         # the same code path on a CPU, tiny sizes

1. the device: name, memory bandwidth (labkit.hardware), and the dense bf16 matmul peak measured here
   (8192^3 products), the ceiling every TFLOP/s below is compared with;
2. the Triton kernel equals SDPA (causal and not, bf16 and fp16, GQA, lengths that are not a multiple
   of the tile);
3. the sweep, bf16, 32 heads x 128 dims, causal, N = 1k..32k: forward, then forward+backward, for naive,
   tiled (plain PyTorch, to 8k), each SDPA backend, and the Triton kernel (forward only);
4. the Triton kernel vs SDPA-flash at 16k, causal and not (the goal: >= 60% of flash's throughput);
5. transformers' attn_implementation "eager" vs "sdpa" on Llama 3.1 8B's architecture (random weights).

Every section writes attention_gpu.json as it finishes, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SDPA_VARIANTS = ["sdpa:flash", "sdpa:efficient", "sdpa:cudnn", "sdpa:math"]


def matmul_peak_tflops(device: str, n: int, runs: int = 10) -> float:
    """Dense bf16 (fp32 on CPU) n x n x n products: mean TFLOP/s of `runs` after 3 warm-ups."""
    import torch

    from labkit.attention import time_call

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    ms = time_call(lambda: a @ b, device, runs=runs, warmup=3)
    return 2 * n**3 / (ms / 1e3) / 1e12


def check_equal(device: str, dtypes: list[str], tiny: bool) -> list[dict]:
    """Max |triton - sdpa| over shapes, against SDPA's math backend in fp32 as the reference."""
    from labkit import attention as A

    rows = []
    shapes = [(1, 4, 4, 64, 64), (2, 8, 2, 1000, 128), (1, 32, 8, 4096, 128)] if not tiny else [(1, 2, 1, 40, 16)]
    for dtype in dtypes:
        for b, h, h_kv, n, d in shapes:
            for causal in (False, True):
                q, k, v = A.random_qkv(n, h, d, h_kv, b, dtype, device, seed=n)
                ref = A.sdpa(q.float(), k.float(), v.float(), causal=causal, backend="math")
                ours = A.triton_attention(q, k, v, causal=causal).float()
                theirs = A.sdpa(q, k, v, causal=causal).float()
                rows.append(dict(dtype=dtype, batch=b, heads=h, kv_heads=h_kv, seq_len=n, head_dim=d, causal=causal,
                                 triton_max_err=(ours - ref).abs().max().item(),
                                 sdpa_max_err=(theirs - ref).abs().max().item()))
                print(f"equal? {dtype} b{b} h{h}/{h_kv} N={n} d={d} causal={causal}: triton err "
                      f"{rows[-1]['triton_max_err']:.2e}, sdpa err {rows[-1]['sdpa_max_err']:.2e}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="small sizes: check the script on a CPU")
    parser.add_argument("--markdown-from", type=Path, help="only write attention_gpu.md from this JSON")
    args = parser.parse_args()
    if args.markdown_from:
        write_markdown(json.loads(args.markdown_from.read_text()), args.out / "attention_gpu.md")
        return
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    import labkit
    from labkit import attention as A

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tiny = args.tiny or device == "cpu"
    out: dict = dict(date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                     command=" ".join(sys.argv), python=platform.python_version(), torch=torch.__version__)
    for pkg in ("triton", "transformers"):
        try:
            out[f"{pkg}_version"] = __import__(pkg).__version__
        except ImportError:
            out[f"{pkg}_version"] = None

    out["errors"] = []

    def save():
        (args.out / "attention_gpu.json").write_text(json.dumps(out, indent=1))

    # 1. the device and its ceilings
    hw = labkit.detect_hardware(check_online=False)
    out["device"] = hw.gpu_name or f"CPU ({hw.cpu_cores} cores)"
    out["bandwidth_bytes_per_s"] = labkit.measure_memory_bandwidth(device, size_mib=64 if tiny else 2048)
    out["matmul_peak_tflops"] = matmul_peak_tflops(device, 512 if tiny else 8192)
    print(f"{out['device']}: bandwidth {out['bandwidth_bytes_per_s'] / 1e9:,.0f} GB/s, dense matmul "
          f"{out['matmul_peak_tflops']:.1f} TFLOP/s", flush=True)
    out["sdpa_backends"] = A.supported_sdpa_backends(torch.bfloat16 if device == "cuda" else torch.float32, 128, device)
    save()

    # 2. equality
    has_triton = device == "cuda"
    if has_triton:
        t0 = time.perf_counter()
        try:
            out["equality"] = check_equal(device, ["bf16", "fp16"], tiny)
        except Exception:  # a kernel that does not compile: record why, measure the rest
            out["errors"].append(traceback.format_exc())
            print(out["errors"][-1], flush=True)
            has_triton = False
        out["equality_seconds"] = time.perf_counter() - t0
        save()

    # 3. the sweep
    dtype = "bf16" if device == "cuda" else "fp32"
    heads, head_dim = (32, 128) if not tiny else (4, 32)
    seq_lens = [1024, 2048, 4096, 8192, 16384, 32768] if not tiny else [64, 128, 256]
    variants = ["naive", *SDPA_VARIANTS] + (["triton"] if has_triton else [])
    for backward in (False, True):
        key = "sweep_backward" if backward else "sweep_forward"
        rows = []
        t0 = time.perf_counter()
        names = [v for v in variants if not (backward and v == "triton")]
        runs = []
        try:
            runs += A.sweep(names, seq_lens, heads, head_dim, dtype=dtype, device=device, causal=True,
                            backward=backward, runs=3, progress=False)
            tiled_lens = [n for n in seq_lens if n <= (8192 if not tiny else 256)]
            runs += A.sweep(["tiled"], tiled_lens, heads, head_dim, dtype=dtype, device=device, causal=True,
                            backward=backward, runs=1, progress=False) if not backward else []
        except Exception:
            out["errors"].append(traceback.format_exc())
            print(out["errors"][-1], flush=True)
        for r in runs:
            print(r, flush=True)
            row = r.as_row()
            row["percent_of_matmul_peak"] = 100 * r.tflops / out["matmul_peak_tflops"] if r.tflops else None
            rows.append(row)
        out[key] = rows
        out[key + "_seconds"] = time.perf_counter() - t0
        save()

    # 4. the goal: Triton vs flash at 16k, causal and not
    try:
        goal_section(out, A, has_triton, tiny, heads, head_dim, dtype, device)
    except Exception:
        out["errors"].append(traceback.format_exc())
        print(out["errors"][-1], flush=True)
    save()

    # 5. transformers eager vs sdpa on a real architecture, random weights
    try:
        transformers_section(out, A, tiny, device)
    except Exception:
        out["errors"].append(traceback.format_exc())
        print(out["errors"][-1], flush=True)
    save()
    write_markdown(out, args.out / "attention_gpu.md")
    print("done", flush=True)


def write_markdown(out: dict, path: Path) -> None:
    """The results as tables: per length, time / memory / TFLOP/s per variant, speed-up and memory ratio."""
    from labkit import attention as A

    peak = out["matmul_peak_tflops"]
    lines = [f"# Attention on {out['device']} ({out['date']})", "",
             f"torch {out['torch']}, triton {out.get('triton_version') or out.get('triton')}, transformers "
             f"{out.get('transformers_version')}, Python {out['python']}. Command: `{out['command']}`.", "",
             f"Measured ceilings: dense bf16 matmul {peak:.0f} TFLOP/s (8192^3), memory bandwidth "
             f"{out['bandwidth_bytes_per_s'] / 1e9:,.0f} GB/s (copy). bf16, batch 1, 32 heads x 128, causal; "
             "memory = peak extra allocation (inputs not counted); ratios are against naive at the same length.", ""]
    for key, title in (("sweep_forward", "Forward"), ("sweep_backward", "Forward + backward")):
        runs = A.committed_runs(out, key)
        if not runs:
            continue
        ratios = {(r["seq_len"], r["variant"]): r for r in A.speedup_table(runs)}
        lines += [f"## {title}", "", "| N | variant | ms | MiB | TFLOP/s | % of matmul peak | speed-up vs naive | "
                  "naive memory / this |", "|---|---|---|---|---|---|---|---|"]
        for r in runs:
            if r.error:
                lines.append(f"| {r.seq_len} | {r.variant} | {r.error} | | | | | |")
                continue
            x = ratios.get((r.seq_len, r.variant), {})
            sp = f"{x['speedup']:.1f}x" if x else ""
            mem = f"{x['memory_ratio']:.0f}x" if x and x.get("memory_ratio") else ""
            lines.append(f"| {r.seq_len} | {r.variant} | {r.ms:.2f} | {r.peak_bytes / 2**20:,.1f} | {r.tflops:.3g} | "
                         f"{100 * r.tflops / peak:.0f}% | {sp} | {mem} |")
        lines.append("")
    if out.get("triton_vs_flash"):
        lines += ["## The course's Triton kernel vs SDPA-flash (goal: >= 60% of flash's throughput)", "",
                  "| N | causal | flash ms | cuDNN ms | Triton ms | Triton TFLOP/s | Triton / flash throughput |",
                  "|---|---|---|---|---|---|---|"]
        for g in out["triton_vs_flash"]:
            lines.append(f"| {g['seq_len']} | {g['causal']} | {g['sdpa:flash_ms']:.2f} | {g['sdpa:cudnn_ms']:.2f} | "
                         f"{g['triton_ms']:.2f} | {g['triton_tflops']:.0f} | {100 * g['triton_share_of_flash']:.0f}% |")
        lines.append("")
    if out.get("equality"):
        worst = max(r["triton_max_err"] for r in out["equality"])
        lines += [f"Triton kernel vs SDPA math in fp32: {len(out['equality'])} cases (bf16/fp16, causal or not, GQA, "
                  f"N=64/1000/4096), largest error {worst:.1e}; SDPA's own kernels show the same errors.", ""]
    rows = out.get("transformers_attention") or []
    if rows:
        lines += ["## transformers attn_implementation (Llama 3.1 8B architecture, random weights, one prefill)", "",
                  "| N | implementation | ms | peak extra GiB |", "|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['seq_len']} | {r['implementation']} | {r['ms']:.0f} | {r['peak_bytes'] / 2**30:.2f} |")
        lines.append("")
    path.write_text("\n".join(lines))


def goal_section(out, A, has_triton, tiny, heads, head_dim, dtype, device) -> None:
    if has_triton:
        goal = []
        n = 16384 if not tiny else 256
        for causal in (True, False):
            pair = {v: A.measure_attention(v, n, heads, head_dim, dtype=dtype, device=device, causal=causal, runs=10,
                                           memory=False) for v in ("sdpa:flash", "sdpa:cudnn", "triton")}
            row = dict(seq_len=n, heads=heads, head_dim=head_dim, causal=causal,
                       **{f"{v}_ms": r.ms for v, r in pair.items()}, **{f"{v}_tflops": r.tflops for v, r in pair.items()})
            row["triton_share_of_flash"] = pair["sdpa:flash"].ms / pair["triton"].ms if pair["triton"].ms else None
            print(f"goal N={n} causal={causal}: flash {row['sdpa:flash_ms']:.2f} ms, cudnn {row['sdpa:cudnn_ms']}, triton "
                  f"{row['triton_ms']:.2f} ms -> triton = {100 * row['triton_share_of_flash']:.0f}% of flash", flush=True)
            goal.append(row)
        out["triton_vs_flash"] = goal


def transformers_section(out, A, tiny, device) -> None:
    import torch

    t0 = time.perf_counter()
    if tiny:
        rows = A.measure_transformers_attention("qwen2.5-0.5b", seq_len=128, dtype="fp32", device=device, runs=1,
                                                num_hidden_layers=2)
    else:
        rows = []
        for n in (2048, 8192):
            rows += A.measure_transformers_attention("llama-3.1-8b", seq_len=n, dtype="bf16", device=device, runs=3)
            torch.cuda.empty_cache()
    for r in rows:
        print(f"transformers {r['model']} {r['implementation']:<5} N={r['seq_len']}: "
              f"{r['ms'] or float('nan'):.1f} ms, peak {(r['peak_bytes'] or 0) / 2**30:.2f} GiB {r['error']}", flush=True)
    out["transformers_attention"] = rows
    out["transformers_seconds"] = time.perf_counter() - t0


if __name__ == "__main__":
    main()
