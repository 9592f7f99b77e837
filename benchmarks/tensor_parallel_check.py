"""Tensor parallelism on 2 GPUs, checked against labkit.vram.split_tensor_parallel (notebook 03's "how many GPUs").

    python benchmarks/tensor_parallel_check.py --out /tmp/tp            # 2+ CUDA GPUs; skipped (exit 0) with fewer
    python benchmarks/tensor_parallel_check.py --out /tmp/tp --device cpu --tiny   # the same path on 2 CPU processes

Each of 2 processes (NCCL on GPUs, gloo on the CPU) holds half of a real architecture's weights, Megatron style:
attention heads and KV heads split between the GPUs (q/k/v column-parallel, o row-parallel), the MLP's
intermediate size split (gate/up column-parallel, down row-parallel), embeddings and LM head split by vocabulary;
one all-reduce after attention and one after the MLP. Random weights (memory and the split do not depend on their
values); no rotary embedding (it changes no shape or byte, and both sides of the comparison skip it). Checked:

1. correctness: on 2 layers, the split forward equals the same layers computed whole on one device;
2. weights per GPU and KV cache per GPU at true size equal `split_tensor_parallel(estimate_inference(...), 2)`'s;
3. each GPU's peak memory during a prefill of --tokens tokens, beside the estimate's per-GPU total (reported: this
   hand-written forward keeps fewer activations than transformers', so it is not held to that figure).

Writes tensor_parallel_check.json to --out and prints every number. With fewer than 2 GPUs it writes
{"status": "skipped", ...} and exits 0: not having a second GPU is not a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 256, "num_hidden_layers": 2, "bos_token_id": 1, "eos_token_id": 2}


def shapes(cfg: dict) -> dict:
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or hidden // heads
    return dict(hidden=hidden, heads=heads, kv=cfg.get("num_key_value_heads", heads), head_dim=head_dim,
                inter=cfg["intermediate_size"], vocab=cfg["vocab_size"], layers=cfg["num_hidden_layers"],
                eps=cfg.get("rms_norm_eps", 1e-5))


def layer_weights(s: dict, rank: int, world: int, dtype, device, gen=None) -> dict:
    """One decoder layer's shards for `rank`. With `gen` (a CPU generator) the whole matrices are drawn and sliced,
    so every rank's slice is part of the same layer (the correctness check); without, shards are drawn in place."""
    import torch

    q_out, kv_out = s["heads"] * s["head_dim"], s["kv"] * s["head_dim"]
    full = {"q": (q_out, s["hidden"]), "k": (kv_out, s["hidden"]), "v": (kv_out, s["hidden"]),
            "o": (s["hidden"], q_out), "gate": (s["inter"], s["hidden"]), "up": (s["inter"], s["hidden"]),
            "down": (s["hidden"], s["inter"])}
    col = {"q", "k", "v", "gate", "up"}  # split the output dimension; the others split the input dimension
    out = {}
    for name, (rows, cols) in full.items():
        if gen is not None:
            whole = torch.randn(rows, cols, generator=gen) * 0.02
            part = whole.chunk(world, dim=0 if name in col else 1)[rank]
            out[name] = part.to(device=device, dtype=dtype)
        else:
            shape = (rows // world, cols) if name in col else (rows, cols // world)
            out[name] = torch.empty(shape, dtype=dtype, device=device).normal_(0, 0.02)
    out["norm1"] = torch.ones(s["hidden"], dtype=dtype, device=device)
    out["norm2"] = torch.ones(s["hidden"], dtype=dtype, device=device)
    return out


def rms_norm(x, weight, eps):
    import torch

    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def layer_forward(x, w: dict, s: dict, world: int, cache: list | None = None):
    """x: (tokens, hidden) on every rank. Returns the layer's output (the same on every rank)."""
    import torch.distributed as dist
    import torch.nn.functional as F

    heads, kv, d = s["heads"] // world, s["kv"] // world, s["head_dim"]
    h = rms_norm(x, w["norm1"], s["eps"])
    q = (h @ w["q"].T).view(-1, heads, d).transpose(0, 1)
    k = (h @ w["k"].T).view(-1, kv, d).transpose(0, 1)
    v = (h @ w["v"].T).view(-1, kv, d).transpose(0, 1)
    if cache is not None:
        cache.append((k, v))  # this GPU's share of the KV cache: kv / world heads
    attn = F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), is_causal=True,
                                          enable_gqa=heads != kv)[0]
    part = attn.transpose(0, 1).reshape(-1, heads * d) @ w["o"].T
    if world > 1:
        dist.all_reduce(part)
    x = x + part
    h = rms_norm(x, w["norm2"], s["eps"])
    part = (F.silu(h @ w["gate"].T) * (h @ w["up"].T)) @ w["down"].T
    if world > 1:
        dist.all_reduce(part)
    return x + part


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker(rank: int, world: int, args, port: int, results_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from labkit import load_config, vram

    cuda = args.device == "cuda"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = load_config(args.model)
    if args.tiny:
        cfg = {**cfg, **TINY}
    s = shapes(cfg)
    result: dict = {"rank": rank, "device": torch.cuda.get_device_name(device) if cuda else "cpu"}

    # 1. correctness: 2 layers split vs the same 2 layers whole
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(64, s["hidden"], generator=gen) * 0.5).to(device=device, dtype=torch.float32)
    split = [layer_weights(s, rank, world, torch.float32, device, torch.Generator().manual_seed(i)) for i in range(2)]
    whole = [layer_weights(s, 0, 1, torch.float32, device, torch.Generator().manual_seed(i)) for i in range(2)]
    y_split, y_whole = x, x
    for w_split, w_whole in zip(split, whole):
        y_split = layer_forward(y_split, w_split, s, world)
        y_whole = layer_forward(y_whole, w_whole, s, 1)
    result["max_abs_diff_vs_one_device"] = float((y_split - y_whole).abs().max())
    del split, whole, x, y_split, y_whole

    # 2. and 3. true size: every layer's shard, embeddings and head split by vocabulary, a prefill of --tokens
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    embed = torch.empty(s["vocab"] // world, s["hidden"], dtype=dtype, device=device).normal_(0, 0.02)
    head = torch.empty(s["vocab"] // world, s["hidden"], dtype=dtype, device=device).normal_(0, 0.02)
    layers = [layer_weights(s, rank, world, dtype, device) for _ in range(s["layers"])]
    final_norm = torch.ones(s["hidden"], dtype=dtype, device=device)
    tensors = [embed, head, final_norm, *(t for w in layers for t in w.values())]
    result["weights_bytes"] = sum(t.numel() * t.element_size() for t in tensors)
    # the norms are whole on every GPU; the estimate splits every weight (they are a few KiB per layer)
    result["replicated_norm_bytes"] = sum(t.numel() * t.element_size() for t in tensors if t.dim() == 1)
    tokens = args.tokens
    ids = torch.randint(0, s["vocab"], (tokens,), device=device)
    with torch.no_grad():
        local = (ids >= rank * embed.shape[0]) & (ids < (rank + 1) * embed.shape[0])  # vocabulary-parallel lookup
        h = torch.zeros(tokens, s["hidden"], dtype=dtype, device=device)
        h[local] = embed[ids[local] - rank * embed.shape[0]]
        dist.all_reduce(h)
        cache: list = []
        for w in layers:
            h = layer_forward(h, w, s, world, cache)
        logits = rms_norm(h[-1:], final_norm, s["eps"]) @ head.T  # this GPU's share of the vocabulary
    result["kv_cache_bytes"] = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in cache)
    result["logits_shape"] = list(logits.shape)
    if cuda:
        torch.cuda.synchronize(device)
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    est = vram.split_tensor_parallel(vram.estimate_inference(cfg, "bf16" if cuda else "fp32", context=tokens,
                                                             new_tokens=0 if args.tiny else 1), world)
    result["estimate_per_gpu"] = {"weights": est.weights, "kv_cache": est.kv_cache, "total": est.total}
    Path(results_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="a tiny version of the architecture (CPU test)")
    args = ap.parse_args()
    import torch
    import torch.multiprocessing as mp

    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / "tensor_parallel_check.json"
    found = torch.cuda.device_count() if args.device == "cuda" else args.world
    if found < args.world:
        result = {"status": "skipped", "reason": f"needs {args.world} GPUs, this machine has {found}",
                  "date": time.strftime("%Y-%m-%d")}
        out_file.write_text(json.dumps(result, indent=2))
        print(f"skipped: {result['reason']} (not a failure; run it where {args.world} GPUs are)")
        return 0
    t0 = time.perf_counter()
    folder = args.out / "ranks"
    folder.mkdir(exist_ok=True)
    mp.spawn(worker, args=(args.world, args, free_port(), str(folder)), nprocs=args.world, join=True)
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(args.world)]
    est = ranks[0]["estimate_per_gpu"]
    checks = {
        "split forward equals the whole (2 layers)": max(r["max_abs_diff_vs_one_device"] for r in ranks) < 1e-4,
        "weights per GPU = estimate (within 0.1%; norms counted whole)": all(
            abs(r["weights_bytes"] - r["replicated_norm_bytes"] * (1 - 1 / args.world) - est["weights"])
            <= 1e-3 * est["weights"] for r in ranks),
        "KV cache per GPU = estimate": all(r["kv_cache_bytes"] == est["kv_cache"] for r in ranks),
    }
    result = {"status": "passed" if all(checks.values()) else "failed", "checks": checks, "model": args.model,
              "tiny": args.tiny, "tokens": args.tokens, "world": args.world, "ranks": ranks,
              "seconds": round(time.perf_counter() - t0, 1), "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__}
    out_file.write_text(json.dumps(result, indent=2))
    gib = 2**30
    for r in ranks:
        peak = f", peak {r['peak_allocated_bytes'] / gib:.2f} GiB" if "peak_allocated_bytes" in r else ""
        print(f"rank {r['rank']} ({r['device']}): weights {r['weights_bytes'] / gib:.3f} GiB, KV "
              f"{r['kv_cache_bytes'] / gib:.3f} GiB{peak}; max |split - whole| {r['max_abs_diff_vs_one_device']:.1e}")
    print(f"estimate per GPU: weights {est['weights'] / gib:.3f} GiB, KV {est['kv_cache'] / gib:.3f} GiB, "
          f"total {est['total'] / gib:.3f} GiB")
    for name, ok in checks.items():
        print(f"{'✅' if ok else '❌'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
