"""Decode speed of a real 8B architecture (random weights, bf16) against the memory-bandwidth roofline.

Two ways to run the same model in transformers on one GPU:
  1. plain `model.generate` (dynamic KV cache, eager PyTorch: one Python-launched kernel at a time);
  2. `generate(..., cache_implementation="static")`: a fixed-size KV cache lets transformers compile the
     decode step with torch.compile (mode "reduce-overhead", i.e. CUDA graphs), removing launch overhead.
  3. the static cache without compilation, to separate the two effects;
  4. a hand-written greedy decode loop (the gpt-fast recipe): static cache, the model's forward
     compiled with CUDA graphs, and no host synchronisation between steps, so the CPU queues the
     next step while the GPU runs this one. `generate` checks its stopping criteria on the host
     every step, which waits for the GPU; this loop does not.

For each: time to first token, decode tokens/s and prompt tokens/s (median of runs after warm-up),
and % of the roofline = bandwidth / bytes read per token (labkit.bench), with the bandwidth both
measured (a large device-to-device copy) and from the datasheet (datasets/gpus.json).

Timing: CUDA events recorded from a logits processor at every step (no host synchronisation
inside the loop), relative to an event recorded just before `generate`.

Reproduce (one GPU with >= 24 GB, e.g. an H100):
    python benchmarks/decode_roofline.py --out datasets/results
CPU smoke test of the code path (tiny copy of the architecture, no compilation):
    python benchmarks/decode_roofline.py --device cpu --layers 2 --hidden 256 --out /tmp/dr
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


def elapsed() -> float:
    return time.perf_counter() - T0


def log(msg: str) -> None:
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


class StepTimer:
    """A logits processor that records a CUDA event (or a host time on CPU) at every decode step."""

    def __init__(self, device: str):
        import torch

        self.device, self.torch = device, torch
        self.marks: list = []

    def start(self):
        self.marks = []
        self.t0 = self._mark()

    def _mark(self):
        if self.device == "cuda":
            ev = self.torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def __call__(self, input_ids, scores):
        self.marks.append(self._mark())
        return scores

    def times(self) -> list[float]:
        """Seconds from start to each step."""
        if self.device == "cuda":
            self.torch.cuda.synchronize()
            return [self.t0.elapsed_time(ev) / 1000 for ev in self.marks]
        return [t - self.t0 for t in self.marks]


def run_variant(name, model, input_ids, new_tokens, runs, warmup, device, gen_kwargs, results, save, budget_end):
    import torch
    from transformers import LogitsProcessorList

    from labkit.bench import median

    timer = StepTimer(device)
    entry = {"variant": name, "generate_kwargs": {k: str(v) for k, v in gen_kwargs.items()}, "runs": []}
    results["variants"].append(entry)

    def once():
        timer.start()
        wall = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 logits_processor=LogitsProcessorList([timer]), pad_token_id=0, **gen_kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - wall
        times = timer.times()
        assert out.shape[-1] - input_ids.shape[-1] == new_tokens, out.shape
        return {"wall_s": wall, "ttft_s": times[0], "decode_tokens_per_s": (len(times) - 1) / (times[-1] - times[0]),
                "steps": len(times)}

    for i in range(warmup):
        t = time.perf_counter()
        r = once()
        log(f"{name}: warm-up {i + 1} took {time.perf_counter() - t:.1f} s ({r['decode_tokens_per_s']:.1f} tok/s)")
        entry.setdefault("warmup_s", []).append(time.perf_counter() - t)
        save()
    for i in range(runs):
        if time.perf_counter() > budget_end and entry["runs"]:
            log(f"{name}: time budget reached after {i} runs")
            break
        r = once()
        entry["runs"].append(r)
        log(f"{name}: run {i + 1}: TTFT {r['ttft_s'] * 1000:.1f} ms, decode {r['decode_tokens_per_s']:.1f} tok/s")
        save()
    p = input_ids.shape[-1]
    entry["ttft_s"] = median([r["ttft_s"] for r in entry["runs"]])
    entry["decode_tokens_per_s"] = median([r["decode_tokens_per_s"] for r in entry["runs"]])
    entry["prompt_tokens_per_s"] = p / entry["ttft_s"]
    return entry


def run_compiled_loop(model, input_ids, new_tokens, runs, device, results, save, budget_end, compile_mode,
                      backend, reference=None):
    """Greedy decoding by hand: eager prefill, then `new_tokens - 1` compiled decode steps, no host syncs."""
    import torch
    from transformers import StaticCache

    from labkit.bench import median

    p = input_ids.shape[-1]
    cache = StaticCache(config=model.config, max_cache_len=p + new_tokens)
    forward = torch.compile(model.forward, mode=compile_mode, backend=backend, fullgraph=False)
    timer = StepTimer(device)
    entry = {"variant": "compiled_loop", "compile": {"mode": compile_mode, "backend": backend}, "runs": []}
    results["variants"].append(entry)

    def once():
        tokens = torch.empty((1, new_tokens), dtype=torch.long, device=device)
        timer.start()
        wall = time.perf_counter()
        with torch.no_grad():  # not inference_mode: the cache must stay a normal tensor for the graphs
            cache.reset()
            pos = torch.arange(p, device=device)
            logits = model(input_ids, past_key_values=cache, cache_position=pos, use_cache=True).logits
            tok = logits[:, -1].argmax(-1, keepdim=True)
            tokens[:, 0:1] = tok
            timer(None, None)
            pos = torch.tensor([p], device=device)
            for i in range(1, new_tokens):
                logits = forward(input_ids=tok, past_key_values=cache, cache_position=pos,
                                 position_ids=pos.unsqueeze(0), use_cache=True).logits
                tok = logits[:, -1].argmax(-1, keepdim=True)  # a fresh tensor: safe from the next graph replay
                tokens[:, i:i + 1] = tok
                timer(None, None)
                pos = pos + 1
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - wall
        times = timer.times()
        return tokens, {"wall_s": wall, "ttft_s": times[0],
                        "decode_tokens_per_s": (len(times) - 1) / (times[-1] - times[0]), "steps": len(times)}

    for i in range(3):  # compile, record the CUDA graph, then one clean run
        t = time.perf_counter()
        tokens, r = once()
        entry.setdefault("warmup_s", []).append(time.perf_counter() - t)
        log(f"compiled_loop: warm-up {i + 1} took {time.perf_counter() - t:.1f} s ({r['decode_tokens_per_s']:.1f} tok/s)")
        save()
    if reference is not None:  # same greedy tokens as generate? (bf16 kernels may differ slightly)
        ref = reference[0, p:p + new_tokens].to(tokens.device)
        entry["tokens_equal_to_generate"] = float((ref == tokens[0]).float().mean())
        entry["first_mismatch"] = int((ref != tokens[0]).nonzero()[0]) if bool((ref != tokens[0]).any()) else None
    for i in range(runs):
        if time.perf_counter() > budget_end and entry["runs"]:
            break
        _, r = once()
        entry["runs"].append(r)
        log(f"compiled_loop: run {i + 1}: TTFT {r['ttft_s'] * 1000:.1f} ms, decode {r['decode_tokens_per_s']:.1f} tok/s")
        save()
    entry["ttft_s"] = median([r["ttft_s"] for r in entry["runs"]])
    entry["decode_tokens_per_s"] = median([r["decode_tokens_per_s"] for r in entry["runs"]])
    entry["prompt_tokens_per_s"] = p / entry["ttft_s"]
    return entry


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-3.1-8b", help="a config in datasets/configs")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=330, help="stop starting new work after this many seconds")
    ap.add_argument("--layers", type=int, default=None, help="smoke test: fewer layers")
    ap.add_argument("--hidden", type=int, default=None, help="smoke test: smaller hidden size")
    ap.add_argument("--out", default=str(ROOT / "datasets" / "results"))
    ap.add_argument("--skip", default="",
                    help="comma-separated variants to skip: plain,static_compiled,static_eager,compiled_loop")
    ap.add_argument("--compile-backend", default="inductor", help="'eager' for a quick CPU check of the loop")
    args = ap.parse_args()

    import torch
    import transformers

    from labkit.bench import model_bytes_per_token, percent_of_roofline, roofline_tokens_per_s
    from labkit.hardware import find_gpu, measure_memory_bandwidth
    from labkit.models import build_random_model

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / "decode_roofline.json"
    budget_end = time.perf_counter() + args.budget_s
    device = args.device
    results: dict = {
        "what": "decode speed of a real architecture with RANDOM weights (bf16) in transformers vs the "
                "memory-bandwidth roofline",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": args.model, "dtype": "bf16", "device": device, "batch_size": 1,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "variants": [], "errors": [],
    }

    def save() -> None:
        results["elapsed_s"] = elapsed()
        out_file.write_text(json.dumps(results, indent=2, default=str))

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        results["gpu"] = props.name
        results["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        bw = max(measure_memory_bandwidth("cuda", size_mib=2048, repeats=10) for _ in range(2))
        results["bandwidth_measured_gbps"] = bw / 1e9
        try:
            spec = find_gpu("H100" if "H100" in props.name else props.name.replace("NVIDIA ", ""))
            results["bandwidth_datasheet_gbps"] = spec["bandwidth_gbps"]
            results["datasheet_entry"] = spec["name"]
        except Exception as err:  # a GPU not in the table: the measured number still stands
            results["errors"].append(f"datasheet lookup: {err}")
        log(f"{props.name}: measured copy bandwidth {bw / 1e9:,.0f} GB/s")
    else:
        bw = measure_memory_bandwidth("cpu")
        results["bandwidth_measured_gbps"] = bw / 1e9
    save()

    overrides = {}
    if args.layers:
        overrides["num_hidden_layers"] = args.layers
    if args.hidden:
        overrides.update(hidden_size=args.hidden, intermediate_size=args.hidden * 3, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=args.hidden // 4)
    dtype = "bf16" if device == "cuda" else "fp32"
    loaded = build_random_model(args.model, dtype=dtype, device=device, **overrides)
    model = loaded.model
    results["parameters"] = loaded.report.parameters
    results["overrides"] = overrides
    log(f"built {loaded.report}")
    context = args.prompt_tokens + args.new_tokens / 2
    bpt = model_bytes_per_token(model, context)
    results["bytes_per_token"] = {"weights": bpt.weights, "embedding_not_read": bpt.embedding_not_read,
                                  "kv_cache": bpt.kv_cache, "total": bpt.total}
    roof = roofline_tokens_per_s(bpt.total, bw)
    results["roofline_measured_tokens_per_s"] = roof
    if "bandwidth_datasheet_gbps" in results:
        results["roofline_datasheet_tokens_per_s"] = roofline_tokens_per_s(bpt.total,
                                                                           results["bandwidth_datasheet_gbps"] * 1e9)
    log(f"{bpt}; roofline {roof:.0f} tok/s at the measured bandwidth")
    save()

    g = torch.Generator(device="cpu").manual_seed(0)
    input_ids = torch.randint(10, model.config.vocab_size - 10, (1, args.prompt_tokens), generator=g).to(device)
    variants = [
        ("plain", {}, 1),
        ("compiled_loop", None, 0),
        ("static_compiled", {"cache_implementation": "static"}, 2),
        ("static_eager", {"cache_implementation": "static", "disable_compile": True}, 1),
    ]
    skip = set(filter(None, args.skip.split(",")))
    reference = None
    if "compiled_loop" not in skip:  # the greedy tokens of plain generate, to check the loop against
        with torch.inference_mode():
            reference = model.generate(input_ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                       do_sample=False, pad_token_id=0)
    for name, kwargs, warmup in variants:
        if name in skip:
            continue
        if time.perf_counter() > budget_end:
            results["errors"].append(f"{name}: skipped, time budget spent")
            log(f"{name}: skipped (budget)")
            continue
        try:
            if name == "compiled_loop":
                mode = "reduce-overhead" if device == "cuda" else "default"
                entry = run_compiled_loop(model, input_ids, args.new_tokens, args.runs, device, results, save,
                                          budget_end, mode, args.compile_backend, reference)
            else:
                entry = run_variant(name, model, input_ids, args.new_tokens, args.runs, warmup, device, kwargs,
                                    results, save, budget_end)
            entry["percent_of_roofline_measured_bw"] = percent_of_roofline(entry["decode_tokens_per_s"], roof)
            if "roofline_datasheet_tokens_per_s" in results:
                entry["percent_of_roofline_datasheet_bw"] = percent_of_roofline(
                    entry["decode_tokens_per_s"], results["roofline_datasheet_tokens_per_s"])
        except Exception as err:  # record it and go on with the next variant
            results["errors"].append(f"{name}: {type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}")
            log(f"{name}: FAILED {type(err).__name__}: {err}")
        save()
        if device == "cuda":
            torch.cuda.empty_cache()

    print("\nvariant            TTFT (ms)  decode tok/s  prompt tok/s  % roofline (measured bw / datasheet bw)")
    for e in results["variants"]:
        if "decode_tokens_per_s" in e:
            print(f"{e['variant']:<18} {e['ttft_s'] * 1000:9.1f}  {e['decode_tokens_per_s']:12.1f}  "
                  f"{e['prompt_tokens_per_s']:12.0f}  {e.get('percent_of_roofline_measured_bw', 0):6.1f}% / "
                  f"{e.get('percent_of_roofline_datasheet_bw', float('nan')):.1f}%")
    print(f"roofline: {roof:.1f} tok/s (measured {bw / 1e9:,.0f} GB/s), bytes/token {bpt.total / 1e9:.3f} GB")
    save()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
