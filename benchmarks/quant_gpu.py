"""bitsandbytes on a GPU: bf16 vs LLM.int8() vs NF4 of the Llama 3.1 8B architecture (random weights).

Per format: the weights' memory measured (torch.cuda.memory_allocated) next to labkit.vram's estimate,
decode tokens/s with transformers' generate, and one large matrix product (the 8B model's MLP
up-projection, 4096 -> 14336) timed at several batch sizes. The matmul shows when quantized is NOT
faster: at batch 1 the product reads the weights once per token and is memory-bound, so fewer bytes can
win; at large batches it is compute-bound, and a quantized layer pays for de-quantizing (NF4) or for
splitting out outliers and rescaling (LLM.int8()) before the same bf16/int8 arithmetic.

Speed and memory do not depend on the weights' values; the weights are random, never used for quality.

    # on a CUDA machine with bitsandbytes installed:
    python benchmarks/quant_gpu.py --out datasets/results/
    # a CPU smoke test of the whole path on a 2-layer model (no bitsandbytes GPU kernels):
    python benchmarks/quant_gpu.py --out /tmp/o --layers 2 --device cpu --formats bf16

Writes quant_gpu.json and quant_gpu.md to --out and prints every number.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL = "llama-3.1-8b"
MIB = 2**20


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def load(fmt: str, device: str, layers: int | None):
    """The 8B architecture in `fmt` on `device` (labkit.vram_measure.load_for_measurement: the one loader)."""
    from labkit import vram_measure
    from labkit.models import build_random_model

    if layers:  # smoke test: a 2-layer copy, bf16 only
        return build_random_model(MODEL, dtype="bf16", device=device, num_hidden_layers=layers).model
    return vram_measure.load_for_measurement(MODEL, fmt, device)


def decode_tokens_per_s(model, device: str, prompt_tokens: int = 32, new_tokens: int = 64) -> dict:
    """Greedy generate: the time of 1 new token (prefill) and of 1 + new_tokens; the difference is decoding."""
    import torch

    ids = torch.randint(3, 32000, (1, prompt_tokens), device=device)
    mask = torch.ones_like(ids)

    def timed(n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=0)
        sync(device)
        return time.perf_counter() - t0

    timed(4)  # warm-up: kernels, cuBLAS handles, caches
    first = statistics.median(timed(1) for _ in range(3))
    full = statistics.median(timed(1 + new_tokens) for _ in range(2))
    return {"prefill_s": first, "decode_tokens_per_s": new_tokens / (full - first), "new_tokens": new_tokens}


def markdown(out: dict) -> str:
    lines = [f"# bitsandbytes on {out['gpu']}: {MODEL} architecture (random weights)", "",
             f"{out['date']} · torch {out['versions']['torch']} · transformers {out['versions']['transformers']} · "
             f"bitsandbytes {out['versions']['bitsandbytes']} · command: `{out['command']}`", "",
             "| format | weights measured (GiB) | labkit.vram estimate (GiB) | error of the estimate | decode tok/s |",
             "|---|---:|---:|---:|---:|"]
    for r in out["models"]:
        err = (r["estimated_bytes"] - r["measured_bytes"]) / r["measured_bytes"] * 100
        lines.append(f"| {r['format']} | {r['measured_bytes'] / 2**30:.2f} | {r['estimated_bytes'] / 2**30:.2f} | "
                     f"{err:+.1f}% | {r.get('decode_tokens_per_s', float('nan')):.1f} |")
    lines += ["", "Matrix product x (batch x 4096) @ W (4096 x 14336), bf16 activations (labkit.quant_bnb.time_linear):", "",
              "| batch | " + " | ".join(f"{f} ms" for f in out["formats"]) + " |",
              "|---:|" + "---:|" * len(out["formats"])]
    for batch in sorted({r["batch"] for r in out["matmul"]}):
        cells = [next((f"{r['ms']:.3f}" for r in out["matmul"] if r["batch"] == batch and r["format"] == f), "–")
                 for f in out["formats"]]
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--formats", nargs="+", default=["bf16", "int8", "nf4"])
    ap.add_argument("--layers", type=int, default=None, help="smoke test: fewer layers (bf16 only)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16, 256, 4096])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--budget-s", type=float, default=240, help="start no new format after this many seconds")
    args = ap.parse_args()

    import datetime

    import torch
    import transformers

    from labkit import quant_bnb, vram

    t_start = time.perf_counter()
    try:
        import bitsandbytes

        bnb_version = bitsandbytes.__version__
    except ImportError:
        bnb_version = None
    out = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "gpu": torch.cuda.get_device_name() if args.device == "cuda" else "CPU",
           "command": "python " + " ".join(sys.argv), "model": MODEL, "formats": args.formats,
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "bitsandbytes": bnb_version}, "models": [], "matmul": []}
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (outdir / "quant_gpu.json").write_text(json.dumps(out, indent=2))
        (outdir / "quant_gpu.md").write_text(markdown(out))

    print(f"{out['gpu']} · torch {torch.__version__} · transformers {transformers.__version__} · "
          f"bitsandbytes {bnb_version}", flush=True)
    out["matmul"] = quant_bnb.time_linear(args.formats, args.batches, device=args.device)
    for r in out["matmul"]:
        print(f"matmul {r['format']:>5} batch {r['batch']:>5}: {r['ms']:8.3f} ms  {r['tflops']:7.1f} TFLOP/s  "
              f"weights read at {r['weight_gb_per_s']:7.0f} GB/s", flush=True)
    save()
    for fmt in args.formats:
        if time.perf_counter() - t_start > args.budget_s:
            print(f"budget spent: skipping {fmt}", flush=True)
            continue
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        model = load(fmt, args.device, args.layers)
        load_s = time.perf_counter() - t0
        measured_alloc = (torch.cuda.memory_allocated() - base) if args.device == "cuda" else None
        parts = quant_bnb.quantized_weight_bytes(model)
        est = vram.weight_bytes(model.config if args.layers else MODEL, fmt)
        row = {"format": fmt, "load_s": load_s, "measured_bytes": measured_alloc or sum(parts.values()),
               "tensor_bytes": parts, "estimated_bytes": sum(est.values()), "estimated_parts": est}
        print(f"{fmt}: loaded in {load_s:.0f} s; weights {row['measured_bytes'] / 2**30:.2f} GiB measured, "
              f"{row['estimated_bytes'] / 2**30:.2f} GiB estimated (labkit.vram)", flush=True)
        row.update(decode_tokens_per_s(model, args.device, new_tokens=args.new_tokens))
        print(f"{fmt}: decode {row['decode_tokens_per_s']:.1f} tokens/s", flush=True)
        out["models"].append(row)
        save()
        del model
    out["seconds"] = time.perf_counter() - t_start
    save()
    print(markdown(out))


if __name__ == "__main__":
    main()
