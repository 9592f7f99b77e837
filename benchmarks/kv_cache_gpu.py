"""KV cache of a real 8B architecture (random weights) from 1k to 128k tokens: measured vs the formula,
and decode speed as the context grows against the roofline with the cache read included.

One cache grows through the whole run: the prompt is fed in chunks (chunked prefill) and at each
checkpoint (1k, 2k, ... 128k tokens) the script
  1. measures the cache: the bytes of the tensors in the transformers DynamicCache, and the growth of
     torch.cuda.memory_allocated() since the model was built (nothing else stays alive), next to
     labkit.vram.kv_cache_bytes for the tokens the cache holds;
  2. decodes `--decode-steps` single tokens (eager, batch 1) and times them with CUDA events;
  3. computes the roofline: bandwidth / (weights read + cache read), with labkit.bench
     (model_bytes_per_token, which adds kv_cache_bytes_read).
Then, if a quantized-cache backend (optimum-quanto or HQQ) is importable, the same for transformers'
QuantizedCache (int4) at a few lengths.

Random weights: memory and speed are those of the real model; the tokens are meaningless.

Reproduce (one GPU with >= 48 GB for 128k tokens; an H100/H200):
    python benchmarks/kv_cache_gpu.py --out datasets/results
CPU smoke test (tiny copy of the architecture):
    python benchmarks/kv_cache_gpu.py --device cpu --layers 2 --hidden 256 --max-tokens 4096 --out /tmp/kv
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def checkpoints(max_tokens: int, start: int = 1024) -> list[int]:
    out, t = [], start
    while t <= max_tokens:
        out.append(t)
        t *= 2
    return out


def grow_and_measure(model, cache, targets, chunk, decode_steps, device, bw, kv_dtype, results_list, save,
                     budget_end, label):
    """Feed random tokens in chunks until each target length; at each, measure memory and decode speed."""
    import torch

    from labkit import kvcache, vram
    from labkit.bench import model_bytes_per_token, roofline_tokens_per_s

    arch = vram.architecture(model.config)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    base = torch.cuda.memory_allocated() if device == "cuda" else 0
    held = 0
    with torch.inference_mode():
        for target in targets:
            if time.perf_counter() > budget_end:
                log(f"{label}: budget spent before {target} tokens")
                results_list.append({"tokens": target, "skipped": "time budget"})
                break
            t_fill = time.perf_counter()
            while held < target:
                n = min(chunk, target - held)
                ids = torch.randint(10, vocab - 10, (1, n), generator=g).to(device)
                out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                held += n
                del out, ids
            sync()
            fill_s = time.perf_counter() - t_fill
            tokens_in_cache = cache.get_seq_length()
            allocated = (torch.cuda.memory_allocated() - base) if device == "cuda" else None
            reserved = torch.cuda.memory_reserved() if device == "cuda" else None
            tensor_bytes = kvcache.quantized_cache_bytes(cache)
            formula = vram.kv_cache_bytes(arch, tokens_in_cache, kv_dtype=kv_dtype)
            # decode: one token at a time, timed with events (eager PyTorch, batch 1)
            tok = torch.randint(10, vocab - 10, (1, 1), generator=g).to(device)
            times = []
            for _ in range(decode_steps):
                if device == "cuda":
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    out = model(input_ids=tok, past_key_values=cache, use_cache=True)
                    b.record()
                    b.synchronize()
                    times.append(a.elapsed_time(b) / 1000)
                else:
                    t = time.perf_counter()
                    out = model(input_ids=tok, past_key_values=cache, use_cache=True)
                    times.append(time.perf_counter() - t)
                tok = out.logits[:, -1:].argmax(-1)
                del out
            held += decode_steps
            steady = sorted(times[1:] if len(times) > 2 else times)
            step_s = steady[len(steady) // 2]
            ctx = tokens_in_cache + decode_steps / 2
            kv_bytes_per_value = vram.KV_BITS[kv_dtype] / 8 if kv_dtype in vram.KV_BITS else 2
            bpt = model_bytes_per_token(model, ctx, kv_bytes_per_value=kv_bytes_per_value)
            weights_only = model_bytes_per_token(model, 0)
            row = {"tokens": tokens_in_cache, "fill_s": fill_s, "cache_tensor_bytes": tensor_bytes,
                   "allocated_growth_bytes": allocated, "reserved_bytes": reserved, "formula_bytes": formula,
                   "tensor_vs_formula": tensor_bytes / formula if formula else None,
                   "decode_step_s_median": step_s, "decode_tokens_per_s": 1 / step_s,
                   "decode_steps": decode_steps, "bytes_per_token": bpt.total, "kv_bytes_read": bpt.kv_cache,
                   "roofline_tokens_per_s": roofline_tokens_per_s(bpt.total, bw),
                   "roofline_weights_only_tokens_per_s": roofline_tokens_per_s(weights_only.total, bw)}
            row["percent_of_roofline"] = 100 * row["decode_tokens_per_s"] / row["roofline_tokens_per_s"]
            results_list.append(row)
            log(f"{label} {tokens_in_cache:>7,} tokens: cache tensors {tensor_bytes / 2**30:7.3f} GiB, formula "
                f"{formula / 2**30:7.3f} GiB, allocated +{(allocated or 0) / 2**30:7.3f} GiB | decode "
                f"{row['decode_tokens_per_s']:6.1f} tok/s, roofline {row['roofline_tokens_per_s']:6.1f} "
                f"({row['percent_of_roofline']:.0f}%) | filled in {fill_s:.1f} s")
            save()
    return held


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-tokens", type=int, default=131072)
    ap.add_argument("--chunk", type=int, default=8192, help="prefill chunk (tokens)")
    ap.add_argument("--decode-steps", type=int, default=12)
    ap.add_argument("--quantized-max-tokens", type=int, default=32768)
    ap.add_argument("--budget-s", type=float, default=200)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "datasets" / "results"))
    args = ap.parse_args()

    import torch
    import transformers

    from labkit import kvcache
    from labkit.hardware import find_gpu, measure_memory_bandwidth
    from labkit.models import build_random_model

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / "kv_cache_gpu.json"
    budget_end = time.perf_counter() + args.budget_s
    device = args.device
    backend = kvcache.quantized_cache_backend()
    results: dict = {
        "what": "KV cache memory (measured vs formula) and decode speed vs context, real architecture with RANDOM "
                "weights, transformers DynamicCache, chunked prefill, batch 1, eager decode",
        "command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": args.model, "device": device,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "quantized_cache_backend": backend},
        "bf16": [], "quantized": [], "errors": [],
    }

    def save() -> None:
        results["elapsed_s"] = time.perf_counter() - T0
        out_file.write_text(json.dumps(results, indent=2, default=str))

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        results["gpu"] = props.name
        results["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        bw = measure_memory_bandwidth("cuda", size_mib=2048, repeats=8)
        try:
            spec = find_gpu(props.name.replace("NVIDIA ", "").split(" ")[0])
            results["bandwidth_datasheet_gbps"] = spec.get("bandwidth_gbps")
            results["datasheet_entry"] = spec.get("name")
        except Exception as err:
            results["errors"].append(f"datasheet lookup: {err}")
    else:
        bw = measure_memory_bandwidth("cpu")
    results["bandwidth_measured_gbps"] = bw / 1e9
    log(f"device {results.get('gpu', 'cpu')}: copy bandwidth {bw / 1e9:,.0f} GB/s; quantized backend: {backend}")
    save()

    overrides = {}
    if args.layers:
        overrides["num_hidden_layers"] = args.layers
    if args.hidden:
        overrides.update(hidden_size=args.hidden, intermediate_size=args.hidden * 3, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=args.hidden // 4)
    dtype = "bf16"
    loaded = build_random_model(args.model, dtype=dtype, device=device, **overrides)
    model = loaded.model
    results["parameters"] = loaded.report.parameters
    results["overrides"] = overrides
    log(f"built {loaded.report}")
    save()

    targets = checkpoints(args.max_tokens)
    try:
        cache = kvcache.make_cache(model, "dynamic")
        grow_and_measure(model, cache, targets, args.chunk, args.decode_steps, device, bw, "bf16", results["bf16"],
                         save, budget_end, "bf16")
        del cache
    except Exception as err:
        results["errors"].append(f"bf16: {type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}")
        log(f"bf16 FAILED: {err}")
    if device == "cuda":
        torch.cuda.empty_cache()
    save()

    if backend:
        try:
            cache = kvcache.make_cache(model, "quantized", nbits=4, residual_length=128, backend=backend)
            grow_and_measure(model, cache, checkpoints(min(args.quantized_max_tokens, args.max_tokens)), args.chunk,
                             args.decode_steps, device, bw, "int4", results["quantized"], save,
                             budget_end + 60, f"int4 ({backend})")
            del cache
        except Exception as err:
            results["errors"].append(f"quantized: {type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}")
            log(f"quantized FAILED: {err}")
    save()
    log("done")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
