"""llama.cpp with CUDA on the same 8B architecture as decode_roofline.py: decode tokens/s vs the roofline.

No real 8B GGUF can be carried to the GPU machine (it has no hub access), so this writes one: Llama 3.1
8B's tensor shapes with random weights in F16, and the real Llama 3 tokenizer and hyper-parameters
taken from llama.cpp's own `models/ggml-vocab-llama-bpe.gguf` (shipped in llama-cpp-python's source).
llama.cpp then quantizes that file to Q8_0 and Q4_K_M itself (`llama_model_quantize`, the same code as
the `llama-quantize` tool). Speed does not depend on the weights' values; the run generates a fixed
number of tokens (end-of-sequence ignored).

    # on a CUDA machine, with llama-cpp-python built for CUDA:
    #   CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" pip install llama-cpp-python
    python benchmarks/llama_cpp_cuda.py --vocab path/to/ggml-vocab-llama-bpe.gguf --work /tmp/gguf --out results/

    # a CPU smoke test of the whole path on a 2-layer model:
    python benchmarks/llama_cpp_cuda.py --vocab ... --work /tmp/gguf --out /tmp/o --layers 2 --device cpu

Writes llama_cpp_cuda.json to --out and prints every number.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = ("The history of computing is a story of machines that grew smaller, faster and cheaper, "
          "from rooms full of vacuum tubes to chips that fit in a phone. ") * 3


def write_random_gguf(vocab_path: Path, out_path: Path, layers: int | None = None, seed: int = 0) -> Path:
    """A GGUF with the vocab file's metadata and tokenizer and random F16 weights of its shapes
    (written by labkit.gguf_files.write_gguf_like, the course's one GGUF writer)."""
    import numpy as np

    from labkit.gguf_files import read_gguf, write_gguf_like

    meta = read_gguf(vocab_path).metadata
    arch = meta["general.architecture"]
    n_layers = layers or meta[f"{arch}.block_count"]
    hidden, ffn = meta[f"{arch}.embedding_length"], meta[f"{arch}.feed_forward_length"]
    heads, kv_heads = meta[f"{arch}.attention.head_count"], meta[f"{arch}.attention.head_count_kv"]
    vocab, head_dim = meta[f"{arch}.vocab_size"], hidden // heads

    shapes = {"token_embd.weight": (vocab, hidden), "output.weight": (vocab, hidden)}
    for i in range(n_layers):
        shapes.update({f"blk.{i}.attn_q.weight": (hidden, hidden), f"blk.{i}.attn_k.weight": (kv_heads * head_dim, hidden),
                       f"blk.{i}.attn_v.weight": (kv_heads * head_dim, hidden),
                       f"blk.{i}.attn_output.weight": (hidden, hidden), f"blk.{i}.ffn_gate.weight": (ffn, hidden),
                       f"blk.{i}.ffn_up.weight": (ffn, hidden), f"blk.{i}.ffn_down.weight": (hidden, ffn)})
    # one random buffer, viewed by every matrix: values do not matter for speed, and this writes 16 GB fast
    rng = np.random.default_rng(seed)
    largest = max(int(np.prod(s)) for s in shapes.values())
    buf = (rng.standard_normal(largest, dtype=np.float32) * 0.02).astype(np.float16)
    ones = np.ones(hidden, dtype=np.float32)  # norms stay F32 in llama.cpp
    tensors = {name: ones for name in ["output_norm.weight"] + [f"blk.{i}.{n}_norm.weight"
                                                                for i in range(n_layers) for n in ("attn", "ffn")]}
    tensors.update({name: buf[: int(np.prod(shape))].reshape(shape) for name, shape in shapes.items()})
    return write_gguf_like(vocab_path, tensors, out_path, dtype="F16", strict=False,
                           metadata={f"{arch}.block_count": n_layers,
                                     "general.name": "random-weights llama 8B architecture (speed only)"})


def quantize(src: Path, dst: Path, ftype_name: str, threads: int) -> Path:
    """llama.cpp's own quantizer (what `llama-quantize src dst Q4_K_M` runs)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype_name}")
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({ftype_name}) returned {rc}")
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", required=True, help="llama.cpp's models/ggml-vocab-llama-bpe.gguf")
    ap.add_argument("--work", required=True, help="a folder with room for the GGUF files (~30 GB for 8B)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=None, help="smoke test: fewer layers")
    ap.add_argument("--types", nargs="+", default=["F16", "Q8_0", "Q4_K_M"])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-s", type=float, default=400, help="start no new file after this many seconds")
    args = ap.parse_args()

    import os

    import labkit
    from labkit import bench, runtimes
    from labkit.models import llama_cpp_gpu_offload, load_llama_cpp

    t_start = time.perf_counter()
    out: dict = {"new_tokens": args.new_tokens, "runs": args.runs}
    if args.device == "cuda":
        # torch's CUDA and ggml-cuda in one process crashed on the H100 machine (torch 2.11+cu130 bundles its
        # own cuBLAS): measure the bandwidth with torch in a child process, keep this one for llama.cpp
        import subprocess

        code = ("import torch, labkit; print(torch.cuda.get_device_name()); "
                "print(labkit.measure_memory_bandwidth('cuda', size_mib=1024))")
        name, bw = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  check=True).stdout.strip().splitlines()[-2:]
        out["gpu"], bandwidth = name, float(bw)
        out["llama_cpp_gpu_offload"] = llama_cpp_gpu_offload()
        if not llama_cpp_gpu_offload():
            sys.exit("this llama-cpp-python has no GPU backend: rebuild it with CMAKE_ARGS=-DGGML_CUDA=on")
    else:
        bandwidth = labkit.measure_memory_bandwidth("cpu", size_mib=256)
    out["bandwidth_gbps"] = bandwidth / 1e9
    print(f"measured bandwidth {bandwidth / 1e9:,.0f} GB/s; llama.cpp GPU offload: {llama_cpp_gpu_offload()}", flush=True)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    f16 = work / "llama8b-random-F16.gguf"
    if not f16.exists():  # a previous run's file is the same (fixed seed)
        t0 = time.perf_counter()
        write_random_gguf(Path(args.vocab), f16, args.layers)
        out["write_f16_s"] = time.perf_counter() - t0
        print(f"wrote {f16} ({f16.stat().st_size / 1e9:.2f} GB) in {out['write_f16_s']:.0f} s", flush=True)

    rows = []
    for qtype in args.types:
        if time.perf_counter() - t_start > args.budget_s:
            print(f"budget spent: skipping {qtype}", flush=True)
            continue
        path = f16
        if qtype != "F16":
            t0 = time.perf_counter()
            path = quantize(f16, work / f"llama8b-random-{qtype}.gguf", qtype, os.cpu_count() or 4)
            print(f"quantized to {qtype} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        for flash in (False, True):
            loaded = load_llama_cpp(path, n_ctx=1024, n_gpu_layers=-1 if args.device == "cuda" else 0,
                                    flash_attn=flash, verbose=args.device == "cuda")
            llm = loaded.model
            prompt_tokens = len(llm.tokenize(PROMPT.encode(), add_bos=True))
            per_token = bench.gguf_bytes_per_token(path, prompt_tokens + args.new_tokens / 2)
            label = f"llama.cpp {qtype}" + (" + flash-attn" if flash else "")
            r = bench.benchmark(label, lambda p, m=llm: runtimes.generate_llama_cpp(m, p, args.new_tokens,
                                                                                    stop_at_eos=False),
                                PROMPT, args.runs, 1, per_token.total, bandwidth)
            print(f"{r}   [{loaded.report.device}; {per_token}]", flush=True)
            rows.append(dict(runtime=label, gguf_type=qtype, flash_attn=flash, device=loaded.report.device,
                             file_gb=path.stat().st_size / 1e9, bytes_per_token=per_token.total,
                             prompt_tokens=prompt_tokens, decode_tokens_per_s=r.decode_tokens_per_s,
                             ttft_ms=r.ttft_s * 1000, prompt_tokens_per_s=r.prompt_tokens_per_s,
                             roofline_tokens_per_s=r.roofline_tokens_per_s,
                             percent_of_roofline=r.percent_of_roofline))
            del llm, loaded
        out["results"] = rows
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "llama_cpp_cuda.json").write_text(json.dumps(out, indent=2))
        if path != f16:
            path.unlink()  # disk: keep only the F16 source between types


if __name__ == "__main__":
    main()
