"""Partial offload, measured: a GGUF larger than the (capped) card runs with as many layers on the GPU as labkit's
estimate says fit (labkit.offload.plan_offload, used by load_llama_cpp when no n_gpu_layers is given).

    python benchmarks/llama_cpp_offload.py --out /tmp/offload        # CUDA llama.cpp; about 2 minutes on an H100
    python benchmarks/llama_cpp_offload.py --out /tmp/o --device cpu --layers 2   # the same path on a CPU (smoke test)

The model: Llama 3.2 1B's shapes (16 layers, 2048 wide, 32 heads, 8 KV heads, 128k vocabulary) with random weights in
F16 (2.5 GB), the Llama 3 tokenizer and hyper-parameters from llama.cpp's own models/ggml-vocab-llama-bpe.gguf
(found in the carried llama-cpp-python source, or --vocab). For each LABKIT_GPU_MEMORY cap (default 1.5, 2, 2.5,
3 GiB and none) a fresh process loads it the course's way and records: the plan (layers on the GPU and the memory
the estimate expects), the GPU memory llama.cpp's load and one generation took (the device's free memory before and
after, measured in that process), and decode / prompt tokens/s. Fewer layers on the GPU: less memory, slower decode
(the CPU reads its layers' weights from RAM every token). Speed does not depend on the weights' values.

Writes llama_cpp_offload.json and .md to --out.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DIMS = {"llama.block_count": 16, "llama.embedding_length": 2048, "llama.feed_forward_length": 8192,
        "llama.attention.head_count": 32, "llama.attention.head_count_kv": 8, "llama.rope.dimension_count": 64}
PROMPT = "The history of computing is a story of machines that grew smaller, faster and cheaper. " * 4
GIB = 1024**3


def find_vocab(work: Path) -> Path:
    """llama.cpp's Llama 3 vocabulary GGUF: from a llama-cpp-python source tree or sdist on this machine."""
    for pattern in ("/tmp/llsrc/*/vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf",
                    str(ROOT / ".gpu-wheels" / "**" / "ggml-vocab-llama-bpe.gguf")):
        found = glob.glob(pattern, recursive=True)
        if found:
            return Path(found[0])
    for sdist in glob.glob(str(ROOT / ".gpu-wheels" / "**" / "llama_cpp_python-*.tar.gz"), recursive=True):
        with tarfile.open(sdist) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("models/ggml-vocab-llama-bpe.gguf")), None)
            if member:
                tar.extract(member, work, filter="data")
                return work / member.name
    raise SystemExit("no ggml-vocab-llama-bpe.gguf found: pass --vocab (it is in llama-cpp-python's source, "
                     "vendor/llama.cpp/models/)")


def write_model(vocab: Path, out_path: Path, layers: int) -> Path:
    import numpy as np

    from labkit.gguf_files import write_gguf_like

    d = {**DIMS, "llama.block_count": layers}
    hidden, ffn = d["llama.embedding_length"], d["llama.feed_forward_length"]
    heads, kv = d["llama.attention.head_count"], d["llama.attention.head_count_kv"]
    head_dim, vocab_size = hidden // heads, 128256
    shapes = {"token_embd.weight": (vocab_size, hidden), "output.weight": (vocab_size, hidden)}
    for i in range(layers):
        shapes.update({f"blk.{i}.attn_q.weight": (hidden, hidden), f"blk.{i}.attn_k.weight": (kv * head_dim, hidden),
                       f"blk.{i}.attn_v.weight": (kv * head_dim, hidden), f"blk.{i}.attn_output.weight": (hidden, hidden),
                       f"blk.{i}.ffn_gate.weight": (ffn, hidden), f"blk.{i}.ffn_up.weight": (ffn, hidden),
                       f"blk.{i}.ffn_down.weight": (hidden, ffn)})
    rng = np.random.default_rng(0)
    buf = (rng.standard_normal(max(int(np.prod(s)) for s in shapes.values()), dtype=np.float32) * 0.02).astype(np.float16)
    ones = np.ones(hidden, dtype=np.float32)
    tensors = {n: ones for n in ["output_norm.weight"] + [f"blk.{i}.{k}_norm.weight" for i in range(layers)
                                                          for k in ("attn", "ffn")]}
    tensors.update({n: buf[: int(np.prod(s))].reshape(s) for n, s in shapes.items()})
    return write_gguf_like(vocab, tensors, out_path, dtype="F16", strict=False,
                           metadata={**d, "general.name": "random-weights llama 1B architecture (speed only)"})


def child(path: str, n_ctx: int, new_tokens: int, device: str) -> dict:
    """One load the course's way (n_gpu_layers from the plan) under this process's LABKIT_GPU_MEMORY."""
    from labkit import bench, runtimes
    from labkit.models import load_llama_cpp
    from labkit.offload import gpu_layers_for

    free_before = None
    if device == "cuda":
        import torch

        torch.cuda.init()
        free_before = torch.cuda.mem_get_info()[0]
    n_gpu_layers, plan = gpu_layers_for(path, n_ctx)
    loaded = load_llama_cpp(path, n_ctx=n_ctx, n_gpu_layers=None if device == "cuda" else 0)
    prompt_tokens = len(loaded.model.tokenize(PROMPT.encode(), add_bos=True))
    per_token = bench.gguf_bytes_per_token(path, prompt_tokens + new_tokens / 2)
    r = bench.benchmark("offload", lambda p: runtimes.generate_llama_cpp(loaded.model, p, new_tokens, stop_at_eos=False),
                        PROMPT, 3, 1, per_token.total, None)
    row = {"cap": os.environ.get("LABKIT_GPU_MEMORY") or "none", "n_gpu_layers": n_gpu_layers,
           "device": loaded.report.device, "decode_tokens_per_s": r.decode_tokens_per_s,
           "prompt_tokens_per_s": r.prompt_tokens_per_s, "ttft_ms": r.ttft_s * 1000}
    if plan is not None:
        row.update(layers_on_gpu=plan.layers_on_gpu, block_count=plan.block_count, plan=str(plan),
                   estimate_gpu_bytes=plan.gpu_bytes, usable_bytes=plan.usable_bytes)
    if free_before is not None:
        import torch

        row["measured_gpu_bytes"] = free_before - torch.cuda.mem_get_info()[0]  # llama.cpp's buffers (context before)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/labkit-offload"))
    ap.add_argument("--vocab", type=Path, default=None)
    ap.add_argument("--caps", nargs="+", default=["1.5GiB", "2GiB", "2.5GiB", "3GiB", "none"])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("ROW " + json.dumps(child(args.child, args.n_ctx, args.new_tokens, args.device)), flush=True)
        return 0

    from labkit.models import llama_cpp_gpu_offload

    if args.device == "cuda" and not llama_cpp_gpu_offload():
        sys.exit("this llama-cpp-python has no GPU backend: build it with CMAKE_ARGS=-DGGML_CUDA=on")
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / f"llama1b-random-F16-{args.layers}layers.gguf"
    t0 = time.perf_counter()
    if not path.exists():
        write_model(args.vocab or find_vocab(args.work), path, args.layers)
    print(f"{path.name}: {path.stat().st_size / 1e9:.2f} GB (written in {time.perf_counter() - t0:.0f} s)", flush=True)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_course_run import libstdcxx_preload

    rows = []
    for cap in args.caps:
        env = libstdcxx_preload(dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                                          os.environ.get("PYTHONPATH")]))))
        env.pop("LABKIT_GPU_MEMORY", None)
        if cap != "none":
            env["LABKIT_GPU_MEMORY"] = cap
        cmd = [sys.executable, __file__, "--out", str(args.out), "--child", str(path), "--n-ctx", str(args.n_ctx),
               "--new-tokens", str(args.new_tokens), "--device", args.device]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        line = next((x for x in done.stdout.splitlines() if x.startswith("ROW ")), None)
        if done.returncode or line is None:
            rows.append({"cap": cap, "error": (done.stderr or done.stdout)[-1500:]})
            print(f"cap {cap}: failed\n{rows[-1]['error']}", flush=True)
            continue
        rows.append(json.loads(line[4:]))
        r = rows[-1]
        measured = f", measured {r['measured_gpu_bytes'] / GIB:.2f} GiB" if "measured_gpu_bytes" in r else ""
        print(f"cap {cap:>7}: {r.get('plan', r['device'])}{measured}; decode {r['decode_tokens_per_s']:.1f} tok/s, "
              f"prompt {r['prompt_tokens_per_s']:.0f} tok/s", flush=True)
    out = {"model": "llama-3.2-1b architecture, random weights, F16", "file_gb": path.stat().st_size / 1e9,
           "n_ctx": args.n_ctx, "new_tokens": args.new_tokens, "device": args.device, "rows": rows,
           "date": time.strftime("%Y-%m-%d"),
           "note": "measured_gpu_bytes: the device's free memory before the load less after one generation, in the "
                   "loading process (its CUDA context existed before); estimate_gpu_bytes includes 0.5 GiB for that "
                   "context (labkit.offload.RUNTIME_BYTES), so compare measured with estimate - 0.5 GiB"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llama_cpp_offload.json").write_text(json.dumps(out, indent=2))
    lines = ["| cap | layers on GPU | estimate GiB (less context) | measured GiB | decode tok/s | prompt tok/s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['cap']} | failed | | | | |")
            continue
        est = f"{(r['estimate_gpu_bytes'] - 0.5 * GIB) / GIB:.2f}" if "estimate_gpu_bytes" in r else "n/a"
        meas = f"{r['measured_gpu_bytes'] / GIB:.2f}" if "measured_gpu_bytes" in r else "n/a"
        layers = f"{r['layers_on_gpu']} of {r['block_count']}" if "layers_on_gpu" in r else r["device"]
        lines.append(f"| {r['cap']} | {layers} | {est} | {meas} | {r['decode_tokens_per_s']:.1f} | "
                     f"{r['prompt_tokens_per_s']:.0f} |")
    (args.out / "llama_cpp_offload.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
