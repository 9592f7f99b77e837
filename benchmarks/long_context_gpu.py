"""Long contexts on a GPU, for notebooks 05 and 06: what a CPU cannot run in a notebook.

1. **Needle in a haystack at long contexts** (05, section 8): the bundled Gemma 3 270M through llama.cpp (CUDA, every
   layer on the GPU) at 4k-64k tokens, five depths, two trials each. Its window is 32k: the lengths beyond it show
   where the model really fails (on a CPU, up to 8k, it found every needle).
2. **llama.cpp with flash attention off and on** (06, section 12): the same model at n_ctx 8k and 32k: the compute
   buffer llama.cpp reports, one long prompt's time and decode tokens/s.
3. **transformers' int4 KV cache (HQQ) tensor by tensor** (05, section 6): benchmarks/kv_cache_gpu.py found the int4
   cache holding 2.3x its formula's bytes at 2k-8k tokens on an H200, and exactly the formula at 1k and 16k; on a CPU
   it matches at every length. This fills the same cache the same way (Llama 3.1 8B's layer shapes, 2 layers, random
   weights, bf16, chunks of 4,096) and records every tensor's storage next to its size, to find which one holds more.

    python benchmarks/long_context_gpu.py --out results/            # on the GPU machine (about 3 minutes on an H100)
    python benchmarks/long_context_gpu.py --out /tmp/o --smoke      # a CPU test of every path at tiny sizes

Needs labkit with llama-cpp-python built for CUDA (benchmarks/gpu_setup.sh) and hqq. Writes long_context_gpu.json
and long_context_gpu.md to --out; each part is saved as soon as it is done, and one that fails is recorded, not fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def needle_part(contexts, depths, trials, gpu_layers, budget_end, out):
    from labkit import kvcache
    from labkit.models import load_llama_cpp

    llm = load_llama_cpp(n_ctx=max(contexts) + 64, n_gpu_layers=gpu_layers, flash_attn=True,
                         n_batch=2048).model
    for context in contexts:
        if time.perf_counter() > budget_end:
            log(f"needle: budget spent before {context} tokens")
            break
        t0 = time.perf_counter()
        found = kvcache.needle_in_haystack(llm, [context], depths, trials=trials, progress=False)
        out["needle"] += [dict(context_tokens=t.context_tokens, depth=t.depth, secret=t.secret, answer=t.answer,
                               found=t.found) for t in found]
        log(f"needle {context:>6,} tokens: {sum(t.found for t in found)}/{len(found)} found "
            f"({time.perf_counter() - t0:.0f} s)")
    del llm


def flash_part(contexts, prompt_tokens, decode_tokens, gpu_layers, out):
    import llama_cpp

    from labkit.flash_options import _COMPUTE_LOG
    from labkit.kvcache import filler_text, llama_with_log
    from labkit.models import bundled_gguf_path

    words = filler_text()
    for n_ctx in contexts:
        for flash in (False, True):
            logs: list[str] = []
            llm = llama_with_log(llama_cpp, logs, model_path=str(bundled_gguf_path()), n_ctx=n_ctx, verbose=True,
                                 flash_attn=flash, n_gpu_layers=gpu_layers, n_batch=2048, seed=0)
            buffers = {dev: float(mib) * 2**20 for dev, mib in _COMPUTE_LOG.findall("".join(logs))}
            n_prompt = min(prompt_tokens, n_ctx - decode_tokens - 8)
            tokens = llm.tokenize((words * (2 + 4 * n_prompt // len(words))).encode(), add_bos=True)[:n_prompt]
            start = time.perf_counter()
            llm.eval(tokens)
            prompt_s = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(decode_tokens):
                llm.eval([llm.sample(top_k=1)])
            decode_s = time.perf_counter() - start
            row = dict(n_ctx=n_ctx, flash_attn=flash, compute_buffers=buffers, prompt_tokens=len(tokens),
                       prompt_s=prompt_s, prompt_tokens_per_s=len(tokens) / prompt_s,
                       decode_tokens_per_s=decode_tokens / decode_s)
            out["flash"].append(row)
            log(f"flash_attn={flash!s:5} n_ctx {n_ctx:>6,}: compute buffers "
                f"{ {k: round(v / 2**20, 1) for k, v in buffers.items()} } MiB, prompt {row['prompt_tokens_per_s']:,.0f} "
                f"tok/s, decode {row['decode_tokens_per_s']:.0f} tok/s")
            del llm


def _storage_rows(obj, name, rows):
    import torch

    if isinstance(obj, torch.Tensor):
        rows.append(dict(tensor=name, dtype=str(obj.dtype), shape=list(obj.shape), device=str(obj.device),
                         storage_bytes=obj.untyped_storage().nbytes(), element_bytes=obj.numel() * obj.element_size(),
                         is_view=obj.untyped_storage().nbytes() != obj.numel() * obj.element_size()))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _storage_rows(v, f"{name}.{k}", rows)
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            _storage_rows(v, f"{name}[{i}]", rows)


def hqq_part(targets, chunk, device, out):
    import torch

    from labkit import kvcache, vram
    from labkit.models import build_random_model

    model = build_random_model("llama-3.1-8b", dtype="bf16", device=device, num_hidden_layers=2).model
    cache = kvcache.make_cache(model, "quantized", nbits=4, residual_length=128, backend="hqq")
    g = torch.Generator().manual_seed(0)
    base = torch.cuda.memory_allocated() if device == "cuda" else 0
    held = 0
    with torch.inference_mode():
        for target in targets:
            while held < target:
                n = min(chunk, target - held)
                ids = torch.randint(10, 1000, (1, n), generator=g).to(device)
                model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                held += n
            tok = torch.tensor([[5]], device=device)
            for _ in range(12):
                model(input_ids=tok, past_key_values=cache, use_cache=True)
                held += 1
            rows: list[dict] = []
            layer = cache.layers[0]
            for attr in ("_quantized_keys", "_quantized_values", "keys", "values"):
                _storage_rows(getattr(layer, attr, None), attr, rows)
            tokens = cache.get_seq_length()
            measured = kvcache.quantized_cache_bytes(cache)
            formula = vram.kv_cache_bytes(model.config, tokens, kv_dtype="int4")
            entry = dict(tokens=tokens, cache_bytes=measured, formula_bytes=formula, ratio=measured / formula,
                         allocated_growth=(torch.cuda.memory_allocated() - base) if device == "cuda" else None,
                         layer0_tensors=rows)
            out["hqq"].append(entry)
            log(f"hqq int4 {tokens:>6,} tokens: {measured / 2**20:8.1f} MiB, formula {formula / 2**20:8.1f} MiB "
                f"({entry['ratio']:.2f}x); layer 0: " + ", ".join(
                    f"{r['tensor']} {r['storage_bytes'] / 2**20:.1f}/{r['element_bytes'] / 2**20:.1f} MiB"
                    for r in rows))


def write_md(out, path):
    lines = [f"# Long contexts on {out.get('gpu', out['device'])} ({out['date']})", ""]
    if out["needle"]:
        lines += ["## Needle in a haystack (Gemma 3 270M, llama.cpp, window 32k)", "",
                  "| context | found |", "|---:|---:|"]
        contexts = sorted({r["context_tokens"] for r in out["needle"]})
        for c in contexts:
            rows = [r for r in out["needle"] if r["context_tokens"] == c]
            lines.append(f"| {c:,} | {sum(r['found'] for r in rows)}/{len(rows)} |")
    if out["flash"]:
        lines += ["", "## llama.cpp flash attention off / on", "", "| n_ctx | -fa | compute buffer MiB | prompt tok/s | "
                  "decode tok/s |", "|---:|---|---:|---:|---:|"]
        for r in out["flash"]:
            lines.append(f"| {r['n_ctx']:,} | {'on' if r['flash_attn'] else 'off'} | "
                         f"{sum(r['compute_buffers'].values()) / 2**20:.1f} | {r['prompt_tokens_per_s']:,.0f} | "
                         f"{r['decode_tokens_per_s']:.0f} |")
    if out["hqq"]:
        lines += ["", "## int4 KV cache (HQQ), 2 layers of Llama 3.1 8B", "", "| tokens | measured ÷ formula |",
                  "|---:|---:|"] + [f"| {r['tokens']:,} | {r['ratio']:.2f} |" for r in out["hqq"]]
    if out["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e.splitlines()[0]}" for e in out["errors"]]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on this machine's CPU (a test of every path)")
    ap.add_argument("--budget-s", type=float, default=240)
    args = ap.parse_args()
    import torch

    from labkit.models import llama_cpp_gpu_offload

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        needle = dict(contexts=[256, 512], depths=[0.0, 1.0], trials=1)
        flash = dict(contexts=[1024], prompt_tokens=128, decode_tokens=4)
        hqq = dict(targets=[256, 512, 1024], chunk=512)
    else:
        needle = dict(contexts=[4096, 8192, 16384, 32768, 49152, 65536], depths=[0.0, 0.25, 0.5, 0.75, 1.0], trials=2)
        flash = dict(contexts=[8192, 32768], prompt_tokens=8000, decode_tokens=64)
        hqq = dict(targets=[1024, 2048, 4096, 8192, 16384], chunk=4096)
    gpu_layers = -1 if llama_cpp_gpu_offload() else 0
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"what": __doc__.split("\n")[0], "command": " ".join(["python", *sys.argv]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device,
           "llama_cpp_gpu": bool(gpu_layers), "window": 32768, "needle": [], "flash": [], "hqq": [], "errors": []}
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    if not args.smoke and not gpu_layers:
        out["errors"].append("llama-cpp-python has no GPU backend here: the needle and flash parts need one")
    budget_end = time.perf_counter() + args.budget_s

    def save():
        (args.out / "long_context_gpu.json").write_text(json.dumps(out, indent=1))
        write_md(out, args.out / "long_context_gpu.md")

    parts = [("hqq", lambda: hqq_part(hqq["targets"], hqq["chunk"], device, out))]
    if args.smoke or gpu_layers:
        parts = [("flash", lambda: flash_part(flash["contexts"], flash["prompt_tokens"], flash["decode_tokens"],
                                              gpu_layers, out)),
                 *parts,
                 ("needle", lambda: needle_part(needle["contexts"], needle["depths"], needle["trials"], gpu_layers,
                                                budget_end, out))]
    for name, run in parts:
        try:
            log(f"{name} ...")
            run()
        except Exception as err:  # one part failing must not lose the others
            out["errors"].append(f"{name}: {type(err).__name__}: {err}\n{traceback.format_exc()[-1500:]}")
            log(f"{name} FAILED: {err}")
        save()
    log(f"wrote {args.out / 'long_context_gpu.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
