"""The KV cache: what it holds, what it costs, and how servers manage it.

Generating token t needs the keys and values of tokens 0..t-1 in every layer. Without a cache the
model recomputes them all at every step (the work per token grows with the sequence: quadratic in
total); with a cache each step computes only the new token's K and V and reads the rest back (linear
in total, but memory that grows with every token).

This module, in the order of notebook 05:

1. the cache transformers builds (`cache_by_layer`), byte for byte against `labkit.vram`'s formula;
2. a greedy decoder written out step by step, with and without the cache (`greedy_decode`);
3. quantized caches: transformers' `QuantizedCache` (`quantized_cache_cost`) and llama.cpp's
   q8_0 / q4_0 cache types (`llama_cpp_cache_types`);
4. prefix caching in llama.cpp (`prefix_reuse_timings`) and a needle in a haystack
   (`needle_in_haystack`): can the bundled model find a fact by position?

How servers manage the cache (the PagedAttention simulator) is labkit.paged. The byte formulas are
labkit.vram's (`kv_cache_bytes`, `kv_cache_bytes_per_layer`, `kv_cache_bytes_per_token`); nothing here
recomputes them.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import vram
from .architecture import architecture
from .bench import load_benchmark_results
from .check import exercise
from .errors import LabkitError, MissingPackageError, require_positive, require_tokens, unknown
from .formatting import GIB
from .hardware import cpu_threads
from .models import BUNDLED, bundled_gguf_path, llama_cpp_logs, load_config, require_llama_cpp, validate_gguf
from .paths import datasets_dir

# torch, transformers, matplotlib and tqdm are imported inside the functions that use them: `import labkit`
# stays quick and works without the optional extras.

# ============================================================================ 1. the real cache


@dataclass(frozen=True)
class LayerCache:
    """One layer of a real cache next to the formula."""

    layer: int
    kind: str  # "full" or "sliding"
    tokens_kept: int  # tokens of K (and V) the layer attends to next step
    measured_bytes: int  # storage the K and V tensors occupy
    formula_bytes: float  # labkit.vram.kv_cache_bytes_per_layer


def _storage_bytes(tensors: Sequence[Any]) -> int:
    """Bytes of the distinct storages behind `tensors` (a view of a bigger tensor counts the whole storage)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None and hasattr(t, "untyped_storage"):
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def cache_layer_bytes(cache: Any) -> list[int]:
    """Per layer: the bytes of storage a transformers cache object holds (K and V together)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise LabkitError(f"expected a transformers Cache (with .layers), got {type(cache).__name__}")
    return [_storage_bytes([getattr(layer, "keys", None), getattr(layer, "values", None)]) for layer in layers]


def cache_by_layer(model: Any, tokens: int, decode_steps: int = 1, seed: int = 0) -> list[LayerCache]:
    """Run `model` on `tokens` prompt tokens, then `decode_steps` single-token steps, and report its cache
    layer by layer beside the formula for the tokens it then holds (`tokens + decode_steps`).

    After at least one decode step the storage equals the formula exactly. Right after the prompt
    (`decode_steps=0`), a sliding-window layer still holds the whole prompt's storage: transformers
    keeps a view of its last window-1 tokens until the next step copies them out.
    """
    import torch

    require_tokens("tokens", tokens)
    require_positive("decode_steps", decode_steps, allow_zero=True)
    arch = architecture(model)
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, arch.vocab_size, (1, tokens), generator=gen).to(param.device)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        for _ in range(decode_steps):
            nxt = out.logits[:, -1:].argmax(-1)
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
    held = tokens + decode_steps
    dtype = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[cache.layers[0].keys.dtype]
    formula = vram.kv_cache_bytes_per_layer(arch, held, kv_dtype=dtype)
    measured = cache_layer_bytes(cache)
    rows = []
    for i, (kind, m, f) in enumerate(zip(arch.layer_types, measured, formula)):
        keys = cache.layers[i].keys
        rows.append(LayerCache(i, kind, int(keys.shape[-2]), m, f))
    return rows


def cache_table(rows: Sequence[LayerCache]) -> str:
    """The per-layer report as text."""
    lines = [f"{'layer':>5} {'kind':<8} {'tokens kept':>11} {'measured KiB':>13} {'formula KiB':>12}  agree"]
    for r in rows:
        same = "✅" if r.measured_bytes == r.formula_bytes else f"❌ {r.measured_bytes - r.formula_bytes:+,.0f} B"
        lines.append(f"{r.layer:>5} {r.kind:<8} {r.tokens_kept:>11,} {r.measured_bytes / 1024:>13,.1f} "
                     f"{r.formula_bytes / 1024:>12,.1f}  {same}")
    total_m, total_f = sum(r.measured_bytes for r in rows), sum(r.formula_bytes for r in rows)
    lines.append(f"{'total':>5} {'':<8} {'':>11} {total_m / 1024:>13,.1f} {total_f / 1024:>12,.1f}")
    return "\n".join(lines)


def attention_family_table(models: Sequence[str], tokens: int = 32768, kv_dtype: str = "bf16") -> list[dict]:
    """Per model: how its attention shares K/V (MHA, GQA, MQA, MLA), KiB per token and the cache at `tokens`."""
    require_tokens("tokens", tokens)
    rows = []
    for name in models:
        a = architecture(name)
        per = sum(vram.kv_cache_bytes_per_token(a, kv_dtype).values())
        rows.append({"model": name, "attention": a.kv_grouping.split(" ")[0], "query heads": a.num_heads,
                     "KV heads": 1 if a.is_mla else a.num_kv_heads,
                     "sliding layers": f"{a.layer_types.count('sliding')}/{a.num_layers}",
                     "KiB/token": per / 1024, "GiB": vram.kv_cache_bytes(a, tokens, kv_dtype=kv_dtype) / GIB,
                     "context window": vram.window_label(a, tokens)})
    return rows


def plot_attention_families(models: Sequence[str], tokens: Sequence[int] = (1024, 8192, 32768, 131072),
                            kv_dtype: str = "bf16"):
    """Cache size against context for several models, on log axes: one colour per model, the marker says the
    attention family, dashed lines have sliding-window layers. A model is drawn up to its own context window;
    beyond it, a dotted grey continuation (the memory it would take, for a context it was not trained for)."""
    import matplotlib.pyplot as plt

    markers = {"MHA": "s", "GQA": "o", "MQA": "^", "MLA": "D"}
    palette = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for i, name in enumerate(models):
        a = architecture(name)
        family = a.kv_grouping.split(" ")[0]
        gib = {t: vram.kv_cache_bytes(a, t, kv_dtype=kv_dtype) / GIB for t in tokens}
        inside = [t for t in tokens if not vram.beyond_window(a, t)]
        beyond = [t for t in tokens if vram.beyond_window(a, t)]
        style = "--" if "sliding" in a.layer_types else "-"
        window = f", window {vram.window_label(a, 0)}" if beyond else ""
        ax.plot(inside, [gib[t] for t in inside], style, marker=markers[family], color=palette(i % 10),
                label=f"{name} ({family}{window})")
        if beyond:
            edge = inside[-1:] + beyond
            ax.plot(edge, [gib[t] for t in edge], ":", color="grey", lw=1)
            ax.plot(beyond, [gib[t] for t in beyond], "x", color=palette(i % 10))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel(f"KV cache, one sequence ({kv_dtype}), GiB")
    ax.set_title("Same context, very different caches (dashed: sliding-window layers; x: beyond the model's window)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def committed_gpu_results(results: dict | None = None) -> dict | None:
    """The committed results of benchmarks/kv_cache_gpu.py (Llama 3.1 8B architecture on a GPU), or None."""
    results = results if results is not None else load_benchmark_results("kv_cache_gpu")
    if not results or not [r for r in results.get("bf16", []) if "decode_tokens_per_s" in r]:
        return None
    return results


def gpu_results_table(results: dict) -> str:
    """The GPU benchmark's rows: cache measured vs formula, decode speed vs the roofline with the cache read."""
    backend = results["versions"].get("quantized_cache_backend")
    lines = [f"{results.get('gpu', results.get('device'))} · {results['model']} (random weights) · torch "
             f"{results['versions']['torch']} · transformers {results['versions']['transformers']} · "
             f"copy bandwidth {results['bandwidth_measured_gbps']:,.0f} GB/s · int4 = transformers' QuantizedCache "
             f"with {backend}",
             f"{'cache':<6} {'tokens':>8} {'tensors GiB':>12} {'formula GiB':>12} {'÷ formula':>10} "
             f"{'allocated GiB':>14} {'tok/s':>7} {'roofline':>9} {'% roof':>7}"]
    for kind in ("bf16", "quantized"):
        for r in results.get(kind, []):
            if "decode_tokens_per_s" not in r:
                continue
            alloc = r.get("allocated_growth_bytes")
            label = "bf16" if kind == "bf16" else "int4"
            lines.append(f"{label:<6} {r['tokens']:>8,} {r['cache_tensor_bytes'] / GIB:>12.3f} "
                         f"{r['formula_bytes'] / GIB:>12.3f} {r['cache_tensor_bytes'] / r['formula_bytes']:>9.2f}x "
                         f"{(alloc / GIB if alloc is not None else float('nan')):>14.3f} "
                         f"{r['decode_tokens_per_s']:>7.1f} {r['roofline_tokens_per_s']:>9.1f} "
                         f"{r['percent_of_roofline']:>6.0f}%")
    return "\n".join(lines)


def gpu_results_markdown(results: dict, weights_bytes: float) -> str:
    """What the committed GPU run shows, in numbers: the cache read next to the weights at the shortest and longest
    length, what that does to the roofline, and where the int4 cache's bytes left the formula."""
    rows = [r for r in results.get("bf16", []) if "decode_tokens_per_s" in r]
    short, long = rows[0], rows[-1]
    text = (f"At {short['tokens']:,} tokens the cache read per step is {short['kv_bytes_read'] / GIB:.2f} GiB next to "
            f"{weights_bytes / 1e9:.2f} GB ({weights_bytes / GIB:.2f} GiB) of bf16 weights; at {long['tokens']:,} it "
            f"is {long['kv_bytes_read'] / GIB:.2f} GiB, and the roofline falls from "
            f"{short['roofline_tokens_per_s']:.0f} to {long['roofline_tokens_per_s']:.0f} tokens/s "
            f"({short['roofline_tokens_per_s'] / long['roofline_tokens_per_s']:.1f}x slower).")
    quantized = [r for r in results.get("quantized", []) if "decode_tokens_per_s" in r]
    off = [r for r in quantized if r["cache_tensor_bytes"] > 1.05 * r["formula_bytes"]]
    if off:
        worst = max(r["cache_tensor_bytes"] / r["formula_bytes"] for r in off)
        matched = ", ".join(f"{r['tokens']:,}" for r in quantized if r not in off)
        text += (f" The int4 cache matched its formula (4.5 bits per value) at {matched} tokens but held up to "
                 f"**{worst:.1f}x** those bytes at {', '.join(format(r['tokens'], ',') for r in off)}, and the allocated "
                 "memory grew by as much, so it is real memory, not a counting error. We have not found why: the same "
                 "cache filled the same way on a CPU (bf16, HQQ) matches the formula at every length, so it is "
                 "something HQQ or transformers does on CUDA. benchmarks/long_context_gpu.py records each of its "
                 "tensors on a GPU to find out; until then, plan for up to that factor at mid lengths.")
    return text


def plot_gpu_results(results: dict):
    """Left: cache GiB vs tokens, measured and formula. Right: decode tokens/s vs the roofline with the cache read."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, colour in (("bf16", "tab:blue"), ("quantized", "tab:orange")):
        rows = [r for r in results.get(kind, []) if "decode_tokens_per_s" in r]
        if not rows:
            continue
        name = "bf16" if kind == "bf16" else "int4 quantized"
        t = [r["tokens"] for r in rows]
        left.plot(t, [r["cache_tensor_bytes"] / GIB for r in rows], "o", color=colour, label=f"{name}: measured")
        left.plot(t, [r["formula_bytes"] / GIB for r in rows], "-", color=colour, alpha=0.6,
                  label=f"{name}: formula")
        right.plot(t, [r["decode_tokens_per_s"] for r in rows], "o-", color=colour, label=f"{name}: measured")
        right.plot(t, [r["roofline_tokens_per_s"] for r in rows], "--", color=colour, label=f"{name}: roofline")
    rows = [r for r in results.get("bf16", []) if "decode_tokens_per_s" in r]
    if rows:
        right.plot([r["tokens"] for r in rows], [r["roofline_weights_only_tokens_per_s"] for r in rows], ":",
                   color="grey", label="roofline, weights only")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens in the cache")
        ax.legend(fontsize=8)
    left.set_ylabel("GiB")
    left.set_title("KV cache: measured vs formula")
    right.set_ylabel("decode tokens/s (batch 1)")
    right.set_title("Decode speed as the context grows")
    fig.suptitle(f"{results['model']} (random weights) on {results.get('gpu', results.get('device'))}")
    fig.tight_layout()
    return fig


# ============================================================================ 2. decoding with and without


@dataclass
class DecodeRun:
    """What `greedy_decode` did: the tokens, and the time and sequence length of every step."""

    use_cache: bool
    tokens: list[int]
    step_seconds: list[float]
    sequence_lengths: list[int]  # tokens the model had to attend over at each step
    prompt_tokens: int

    @property
    def total_seconds(self) -> float:
        return sum(self.step_seconds)


def greedy_decode(model: Any, input_ids: Any, new_tokens: int, use_cache: bool = True,
                  progress: bool = False) -> DecodeRun:
    """Greedy decoding written out. Every step picks the most likely next token.

    - use_cache=False: each step runs the whole sequence so far through the model (recomputing every
      earlier token's keys and values), then keeps only the last position's logits.
    - use_cache=True: the first step runs the prompt and keeps its keys and values (the cache); every
      later step runs ONE token and reads the rest from the cache.
    """
    import torch

    require_tokens("new_tokens", new_tokens)
    if getattr(input_ids, "ndim", 0) != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
        raise LabkitError("input_ids must be a (1, n) tensor of token ids with n >= 1 (one sequence).")
    from tqdm.auto import tqdm

    ids = input_ids
    cache = None
    tokens, seconds, lengths = [], [], []
    steps = tqdm(range(new_tokens), desc="with cache" if use_cache else "without cache", disable=not progress,
                 leave=False)
    with torch.inference_mode():
        for _ in steps:
            start = time.perf_counter()
            if not use_cache:
                logits = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
            elif cache is None:
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                logits, cache = out.logits, out.past_key_values
            else:
                out = model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True, logits_to_keep=1)
                logits, cache = out.logits, out.past_key_values
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            seconds.append(time.perf_counter() - start)
            lengths.append(ids.shape[1])
            ids = torch.cat([ids, nxt], dim=1)
            tokens.append(int(nxt))
    return DecodeRun(use_cache, tokens, seconds, lengths, int(input_ids.shape[1]))


def decode_summary_markdown(without: DecodeRun, with_cache: DecodeRun) -> str:
    """The two decoders in numbers: how the step time grew without the cache (first and last quarter of the steps),
    how flat it stayed with it (its first step, the prefill, left out), and whether the total bent upwards."""
    if not without.step_seconds or len(with_cache.step_seconds) < 2:
        raise LabkitError("decode_summary_markdown needs two runs of at least 2 steps (greedy_decode)")
    quarter = max(1, len(without.step_seconds) // 4)
    first = sum(without.step_seconds[:quarter]) / quarter
    last = sum(without.step_seconds[-quarter:]) / quarter
    cached = sorted(with_cache.step_seconds[1:])[len(with_cache.step_seconds[1:]) // 2]
    growth = last / first
    lengths = without.sequence_lengths
    text = (f"Without the cache a step ran {lengths[0]} tokens at first and {lengths[-1]} at the end; its first "
            f"{quarter} steps took {1000 * first:.0f} ms each on average, its last {quarter} **{1000 * last:.0f} ms** "
            f"({growth:.1f}x). With the cache a step took **{1000 * cached:.0f} ms** (median, the prefill left out), "
            f"whatever the length. In total: {without.total_seconds:.1f} s against {with_cache.total_seconds:.1f} s. ")
    if growth >= 1.3:
        text += ("The uncached step time grows with the sequence, so its running total bends upwards: quadratic "
                 "against linear.")
    else:
        text += (f"Here the uncached steps grew only {growth:.1f}x: on this machine a step's fixed cost (the 262k-word "
                 "output layer, Python) still hides most of the growth at these lengths; a longer run bends more.")
    return text


def plot_decode_runs(without: DecodeRun, with_cache: DecodeRun):
    """Time per step and cumulative time, with and without the cache."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for run, colour in ((without, "tab:red"), (with_cache, "tab:blue")):
        label = "with cache" if run.use_cache else "without cache"
        ms = np.array(run.step_seconds) * 1000
        # the cached run's first step is the prompt (prefill): show it, but it is not a decode step
        left.plot(run.sequence_lengths, ms, ".-", color=colour, label=label)
        right.plot(run.sequence_lengths, np.cumsum(ms) / 1000, ".-", color=colour, label=label)
    left.set_xlabel("sequence length at the step (tokens)")
    left.set_ylabel("ms for the step")
    left.set_title("Time per token")
    right.set_xlabel("sequence length (tokens)")
    right.set_ylabel("seconds so far")
    right.set_title("Total time: quadratic vs linear")
    left.legend()
    fig.tight_layout()
    return fig


# ============================================================================ 3. quantized caches

QUANT_BACKENDS = ("quanto", "hqq")


def quantized_cache_backend() -> str | None:
    """The transformers quantized-cache backend installed here: 'hqq' (the course's choice), 'quanto', or None.

    Both were tried with transformers 5.23 on a 2-core CPU: HQQ is pure Python and PyTorch and ran at once;
    optimum-quanto 0.2.7 compiles a C++ extension the first time it de-quantizes on a CPU (13 minutes on
    a busy 2-core machine), so the course installs HQQ (`lab` extra).
    """
    import importlib.util

    if importlib.util.find_spec("hqq"):
        return "hqq"
    if importlib.util.find_spec("optimum") and importlib.util.find_spec("optimum.quanto"):
        return "quanto"
    return None


def _tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes held by a tensor, a quantized tensor subclass (its inner tensors), or a tuple/list/dict of them."""
    import torch

    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        flatten = getattr(type(obj), "__tensor_flatten__", None)
        if flatten is not None and type(obj) is not torch.Tensor and not isinstance(obj, torch.nn.Parameter):
            names, _ = obj.__tensor_flatten__()
            return sum(_tensor_bytes(getattr(obj, n), seen) for n in names)
        st = obj.untyped_storage()
        if st.data_ptr() in seen:
            return 0
        seen.add(st.data_ptr())
        return st.nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    return 0


def quantized_cache_bytes(cache: Any) -> int:
    """Bytes a (possibly quantized) transformers cache holds: quantized part, scales, and the
    full-precision residual of recent tokens."""
    total = 0
    for layer in cache.layers:
        seen: set[int] = set()
        for attr in ("_quantized_keys", "_quantized_values", "keys", "values"):
            total += _tensor_bytes(getattr(layer, attr, None), seen)
    return total


def make_cache(model: Any, kind: str = "dynamic", nbits: int = 4, residual_length: int = 16,
               q_group_size: int = 64, backend: str | None = None):
    """A transformers cache for `model`: "dynamic" (full precision) or "quantized" (`nbits` with the
    installed backend; the last `residual_length` tokens stay in full precision)."""
    from transformers import DynamicCache

    if kind == "dynamic":
        return DynamicCache(config=model.config)
    if kind != "quantized":
        raise unknown("cache kind", kind, ("dynamic", "quantized"))
    backend = backend or quantized_cache_backend()
    if backend is None:
        raise MissingPackageError("hqq", "A quantized KV cache in transformers", extra="lab")
    if backend not in QUANT_BACKENDS:
        raise unknown("quantized-cache backend", backend, QUANT_BACKENDS)
    from transformers import QuantizedCache

    if "sliding" not in architecture(model.config).layer_types:
        return QuantizedCache(backend=backend, config=model.config, nbits=nbits, residual_length=residual_length,
                              q_group_size=q_group_size)
    # transformers' QuantizedCache refuses models with sliding-window layers (Gemma 2/3). Build the same
    # quantized layers for every layer: sliding layers then keep all tokens (quantized) instead of the
    # window; the attention mask still applies the window, so the outputs are right, only the memory is
    # that of all-global layers beyond the window.
    from transformers.cache_utils import Cache, HQQQuantizedLayer, QuantoQuantizedLayer

    layer_class = HQQQuantizedLayer if backend == "hqq" else QuantoQuantizedLayer
    layers = [layer_class(nbits=nbits, residual_length=residual_length, q_group_size=q_group_size)
              for _ in range(model.config.get_text_config(decoder=True).num_hidden_layers)]
    return Cache(layers=layers)


@dataclass
class CacheQuality:
    """Teacher-forced decoding of one text with one cache, compared with a full-precision cache."""

    label: str
    cache_bytes: int
    tokens: int  # tokens in the cache at the end
    full_precision_tokens: int  # of those, the recent ones a quantized cache still holds unquantized (all: dynamic)
    perplexity: float
    top1_agreement: float  # share of steps whose most likely token equals the full-precision cache's
    seconds: float


def teacher_forced_logits(model: Any, ids: Any, prompt_tokens: int, cache: Any, progress: bool = False):
    """Run the first `prompt_tokens` as a prompt, then the rest of `ids` one token at a time through
    `cache` (as decoding would). Returns (logits for positions prompt_tokens-1 .. n-2, the cache)."""
    import torch
    from tqdm.auto import tqdm

    n = ids.shape[1]
    if not 1 <= prompt_tokens < n:
        raise LabkitError(f"prompt_tokens must be between 1 and {n - 1} (the text has {n} tokens), got {prompt_tokens}")
    out_logits = []
    with torch.inference_mode():
        out = model(input_ids=ids[:, :prompt_tokens], past_key_values=cache, use_cache=True, logits_to_keep=1)
        out_logits.append(out.logits[:, -1].float())
        for i in tqdm(range(prompt_tokens, n - 1), disable=not progress, leave=False, desc="decoding"):
            out = model(input_ids=ids[:, i:i + 1], past_key_values=cache, use_cache=True)
            out_logits.append(out.logits[:, -1].float())
    return torch.cat(out_logits), cache


def quantized_cache_cost(model: Any, ids: Any, prompt_tokens: int, nbits: Sequence[int] = (4, 2),
                         residual_length: int = 16, backend: str | None = None,
                         progress: bool = False) -> list[CacheQuality]:
    """Decode `ids` teacher-forced with a full-precision cache and with quantized caches; report each
    cache's bytes, the perplexity of the text's next tokens, and top-1 agreement with full precision."""
    import torch

    targets = ids[0, prompt_tokens:]
    results, reference = [], None
    configs = [("dynamic", None)] + [("quantized", b) for b in nbits]
    for kind, bits in configs:
        cache = make_cache(model, kind, nbits=bits or 4, residual_length=residual_length, backend=backend)
        start = time.perf_counter()
        logits, cache = teacher_forced_logits(model, ids, prompt_tokens, cache, progress=progress)
        seconds = time.perf_counter() - start
        nll = torch.nn.functional.cross_entropy(logits, targets.to(logits.device))
        top1 = logits.argmax(-1)
        if reference is None:
            reference = top1
        label = "full precision" if kind == "dynamic" else f"int{bits} ({backend or quantized_cache_backend()})"
        held = int(ids.shape[1] - 1)
        residual = cache.layers[0].keys
        unquantized = held if kind == "dynamic" else (int(residual.shape[-2]) if residual.dim() == 4 else 0)
        results.append(CacheQuality(label, quantized_cache_bytes(cache), held, unquantized, math.exp(float(nll)),
                                    float((top1 == reference).float().mean()), seconds))
    return results


# --- llama.cpp's own cache types

LLAMA_CPP_CACHE_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml type ids (ggml.h: GGML_TYPE_*)
LLAMA_CPP_KV_DTYPE = {"f16": "fp16", "q8_0": "Q8_0", "q4_0": "Q4_0"}  # the names labkit.vram knows


@dataclass
class LlamaCppCacheResult:
    cache_type: str
    reported_bytes: float | None  # what llama.cpp's log says its KV buffers take
    formula_bytes: float  # labkit.vram for the context llama.cpp allocated
    perplexity: float
    top1_agreement: float  # against f16
    seconds: float


_KV_LOG = re.compile(r"llama_kv_cache(?:_unified)?(?:_iswa)?:\s+\w+\s+KV buffer size\s+=\s+([\d.]+)\s+MiB")


def llama_cpp_cache_types(text: str, cache_types: Sequence[str] = ("f16", "q8_0", "q4_0"), n_ctx: int = 512,
                          path: str | None = None) -> list[LlamaCppCacheResult]:
    """Evaluate `text` with llama.cpp for each cache type (flash attention on: llama.cpp needs it for a
    quantized V cache). Reports the KV buffer size from llama.cpp's own log, the formula, perplexity
    and top-1 agreement with f16."""
    import numpy as np

    for ct in cache_types:
        if ct not in LLAMA_CPP_CACHE_TYPES:
            raise unknown("llama.cpp cache type", ct, LLAMA_CPP_CACHE_TYPES)

    llama_cpp = require_llama_cpp("llama.cpp's quantized KV cache")

    gguf = str(validate_gguf(path) if path else bundled_gguf_path())
    results, reference = [], None
    for ct in cache_types:
        logs: list[str] = []
        start = time.perf_counter()
        llm = llama_with_log(llama_cpp, logs, model_path=gguf, n_ctx=n_ctx, logits_all=True, verbose=True,
                              flash_attn=True, type_k=LLAMA_CPP_CACHE_TYPES[ct], type_v=LLAMA_CPP_CACHE_TYPES[ct],
                              n_gpu_layers=0, seed=0, n_threads=cpu_threads())
        tokens = llm.tokenize(text.encode(), add_bos=True)[:n_ctx]
        if len(tokens) < 2:
            raise LabkitError("the text must be at least 2 tokens long")
        llm.reset()
        llm.eval(tokens)
        scores = np.asarray(llm.scores[: len(tokens) - 1], dtype=np.float32)
        seconds = time.perf_counter() - start
        top = scores.max(axis=1)
        log_norm = top + np.log(np.exp(scores - top[:, None]).sum(axis=1))
        nll = float((log_norm - scores[np.arange(len(tokens) - 1), tokens[1:]]).mean())
        top1 = scores.argmax(axis=1)
        del scores
        if reference is None:
            reference = top1
        sizes = [float(m) * 2**20 for m in _KV_LOG.findall("".join(logs))]
        n_ctx_used = llm.n_ctx()
        del llm
        results.append(LlamaCppCacheResult(
            ct, sum(sizes) if sizes else None,
            vram.kv_cache_bytes(BUNDLED, n_ctx_used, kv_dtype=LLAMA_CPP_KV_DTYPE[ct]),
            float(math.exp(nll)), float((top1 == reference).mean()), seconds))
    return results


def llama_with_log(llama_cpp: Any, logs: list[str], **kwargs: Any):
    """Build a llama_cpp.Llama while collecting llama.cpp's log lines (it reports its buffer sizes there)."""
    import contextlib
    import io

    buffer = io.StringIO()
    # labkit quiets llama.cpp's log (models.load_llama_cpp): turn it on while the buffer sizes are printed
    with llama_cpp_logs(verbose=True), contextlib.redirect_stderr(buffer):
        llm = llama_cpp.Llama(**kwargs)
    logs.append(buffer.getvalue())
    return llm


# ============================================================================ prefix caching


def prefix_reuse_timings(llm: Any, document: str, questions: Sequence[str]) -> dict[str, float]:
    """Time llama.cpp's prompt processing for `document + question`, first with an empty cache, then for
    each further question with the document's cache kept (llama-cpp-python re-uses the longest
    matching prefix of the previous prompt). One generated token each, so the time is the prefill."""
    if not questions:
        raise LabkitError("give at least one question")
    llm.reset()
    out: dict[str, float] = {}
    for i, q in enumerate(questions):
        prompt = f"{document}\n\n{q}\nAnswer:"
        start = time.perf_counter()
        llm.create_completion(prompt, max_tokens=1, temperature=0.0)
        label = "first question (whole prompt)" if i == 0 else f"question {i + 1} (document cached)"
        out[label] = time.perf_counter() - start
    return out


# ============================================================================ 4. needle in a haystack


def filler_text() -> str:
    """Plain prose with no numbers in it, to bury a needle in (datasets/kv_cache/filler.txt)."""
    return (datasets_dir() / "kv_cache" / "filler.txt").read_text()


@dataclass(frozen=True)
class NeedleTrial:
    context_tokens: int
    depth: float  # 0 = the needle opens the context, 1 = it closes it
    secret: str
    answer: str
    found: bool


NEEDLE = "The secret number is {secret}."
QUESTION = "\n\nQuestion: What is the secret number mentioned in the text above?\nAnswer: The secret number is"


def build_haystack(count_tokens: Any, context_tokens: int, depth: float, needle: str, filler: str | None = None,
                   question: str = QUESTION) -> str:
    """A prompt of about `context_tokens` tokens: filler sentences with `needle` placed at `depth`
    (0 = first, 1 = last before the question), then the question. `count_tokens(text) -> int`."""
    require_tokens("context_tokens", context_tokens)
    if not 0.0 <= depth <= 1.0:
        raise LabkitError(f"depth must be between 0 (start) and 1 (end), got {depth!r}")
    fixed = count_tokens(needle + " " + question)
    if fixed >= context_tokens:
        raise LabkitError(f"the needle and the question take {fixed} tokens, more than the context of "
                          f"{context_tokens}: use a context of at least {fixed + 1} tokens or a shorter needle.")
    sentences = [s.strip() + "." for s in (filler or filler_text()).replace("\n", " ").split(".") if s.strip()]
    budget = context_tokens - fixed
    chosen: list[str] = []
    used, i = 0, 0
    while True:
        s = sentences[i % len(sentences)]
        cost = count_tokens(" " + s)
        if used + cost > budget:
            break
        chosen.append(s)
        used += cost
        i += 1
    at = round(depth * len(chosen))
    return " ".join(chosen[:at] + [needle] + chosen[at:]) + question


def needle_in_haystack(llm: Any, contexts: Sequence[int], depths: Sequence[float] = (0.0, 0.5, 1.0),
                       trials: int = 1, seed: int = 0, progress: bool = True) -> list[NeedleTrial]:
    """Bury "The secret number is NNNN." at each depth of a filler text of each context length and ask for
    it back (greedy, a few tokens) with a llama.cpp model. Found = the answer starts with the number."""
    from tqdm.auto import tqdm

    require_positive("trials", trials)
    for c in contexts:
        require_tokens("context", c)
    n_ctx = llm.n_ctx()
    if max(contexts) + 8 > n_ctx:
        raise LabkitError(f"the longest context ({max(contexts)}) plus the answer does not fit the model's "
                          f"n_ctx={n_ctx}: load it with a larger n_ctx.")
    rng = random.Random(seed)
    count = lambda text: len(llm.tokenize(text.encode(), add_bos=False))  # noqa: E731
    filler = filler_text()
    grid = [(c, d, t) for c in contexts for d in depths for t in range(trials)]
    out = []
    for c, d, _ in tqdm(grid, desc="needle", disable=not progress):
        secret = str(rng.randint(1000, 9999))
        prompt = build_haystack(count, c, d, NEEDLE.format(secret=secret), filler)
        reply = llm.create_completion(prompt, max_tokens=5, temperature=0.0, top_k=1)["choices"][0]["text"]
        answer = reply.strip()
        out.append(NeedleTrial(c, d, secret, answer, answer.startswith(secret)))
    return out


def needle_accuracy(trials: Sequence[NeedleTrial]) -> dict[tuple[int, float], float]:
    """Share found, per (context, depth)."""
    cells: dict[tuple[int, float], list[bool]] = {}
    for t in trials:
        cells.setdefault((t.context_tokens, t.depth), []).append(t.found)
    return {k: sum(v) / len(v) for k, v in cells.items()}


def needle_markdown(trials: Sequence[NeedleTrial], window: int | None = None) -> str:
    """What a needle grid found, in numbers: the share found overall and per context length, and where it failed
    (`window`: the model's trained context, to say which lengths lie beyond it)."""
    if not trials:
        raise LabkitError("needle_markdown needs the trials of needle_in_haystack")
    by_context: dict[int, list[bool]] = {}
    for t in trials:
        by_context.setdefault(t.context_tokens, []).append(t.found)
    parts = [f"{c:,} tokens{' (beyond its window)' if window and c > window else ''}: {sum(f)}/{len(f)}"
             for c, f in sorted(by_context.items())]
    found = sum(t.found for t in trials)
    text = f"Found **{found} of {len(trials)}** needles ({'; '.join(parts)})."
    missed = [t for t in trials if not t.found]
    if not missed:
        return text + " At these lengths this model finds every needle: the grid shows no weak spot to read."
    worst = max(by_context, key=lambda c: (by_context[c].count(False), c))
    examples = ", ".join(f"{t.answer!r} for {t.secret}" for t in missed[:3])
    return text + (f" The misses concentrate at {worst:,} tokens; wrong answers look like this: {examples}.")


def committed_needle_results(results: dict | None = None) -> dict | None:
    """The committed long-context needle run of benchmarks/long_context_gpu.py: {"device", "window", "trials"}; None
    while that run has not been committed yet."""
    from .paths import results_dir

    if results is None and (results_dir() / "long_context_gpu.json").is_file():
        results = load_benchmark_results("long_context_gpu")
    if not results or not results.get("needle"):
        return None
    trials = [NeedleTrial(r["context_tokens"], r["depth"], r["secret"], r["answer"], r["found"])
              for r in results["needle"]]
    return {"device": results.get("gpu", results.get("device", "GPU")), "window": results.get("window"),
            "trials": trials}


def plot_needle(trials: Sequence[NeedleTrial], title: str | None = None):
    """A heat map: context length (rows) x needle depth (columns), share found."""
    import matplotlib.pyplot as plt
    import numpy as np

    acc = needle_accuracy(trials)
    contexts = sorted({c for c, _ in acc})
    depths = sorted({d for _, d in acc})
    grid = np.array([[acc[(c, d)] for d in depths] for c in contexts])
    fig, ax = plt.subplots(figsize=(1.4 * len(depths) + 2.5, 0.6 * len(contexts) + 1.8))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_yticks(range(len(contexts)), [f"{c:,}" for c in contexts])
    for i in range(len(contexts)):
        for j in range(len(depths)):
            ax.text(j, i, f"{grid[i, j]:.0%}", ha="center", va="center")
    ax.set_xlabel("where the needle sits (0% = start of the context)")
    ax.set_ylabel("context (tokens)")
    ax.set_title(title or "Needle found (greedy answer starts with the number)")
    ax.grid(False)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig


# ============================================================================ exercises


def _all_global_cache_bytes(expected: float, model: str, tokens: int, kv_dtype: str = "fp32") -> float:
    """The slip's value: the same model with every layer global (as notebook 05, section 5, builds it)."""
    config = load_config(model)
    config["layer_types"] = ["full_attention"] * config["num_hidden_layers"]
    return vram.kv_cache_bytes(config, tokens, kv_dtype=kv_dtype)


@exercise("05.sliding_cache_bytes",
          hint="Two kinds of layer: a global one keeps every token, a sliding one never more than its window. Work out "
               "what one layer stores per token, then how many tokens each kind holds, and add the layers up.",
          slips={"treating every layer as global (a sliding layer stops at its window)": _all_global_cache_bytes,
                 "counting only K or only V (the cache holds both)": 0.5,
                 "using the query heads instead of the one KV head":
                     lambda expected, model, **_: expected * architecture(model).num_heads / architecture(
                         model).num_kv_heads,
                 "dividing by 2**30 (GiB) where bytes are asked": 2**-30})
def _expected_sliding_cache_bytes(model: str, tokens: int, kv_dtype: str = "fp32") -> float:
    return vram.kv_cache_bytes(model, tokens, kv_dtype=kv_dtype)
