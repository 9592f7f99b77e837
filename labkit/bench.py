"""Benchmarks: time-to-first-token, tokens/s, and the memory-bandwidth roofline.

Decoding one token reads every weight the token needs from memory once (plus the KV cache so far),
and does only ~2 FLOPs per weight. On every CPU and GPU that is far less arithmetic than the chip
can do in the time the bytes take to arrive, so the speed limit is memory bandwidth:

    tokens/s  <=  bandwidth (bytes/s)  /  bytes read per token

That ceiling is the *roofline*. A runtime's "% of roofline" says how much of the hardware it uses;
the gap is overhead (Python, kernel launches, synchronisation, non-fused kernels).

Bytes read per token:
- the weights: for a GGUF file, its tensors' bytes; for a PyTorch model, its parameters' bytes;
- but NOT the whole input embedding table when it is separate from the LM head: looking a token up
  reads one row (a gather), not the table. When the embedding is tied to the LM head (Gemma), the
  LM head's matrix product does read all of it, every token;
- plus the KV cache read by attention: 2 (K and V) x layers x KV heads x head_dim x context x bytes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .check import exercise, validator
from .errors import LabkitError, require_positive
from .gguf_files import GgufTensor, read_gguf

# matplotlib is imported inside the functions that use it: `import labkit` stays quick and works without the
# optional extras.

# ----------------------------------------------------------------------------- timing


@dataclass
class BenchResult:
    """Medians over `runs` timed generations (after warm-up) of one runtime."""

    runtime: str
    runs: int
    prompt_tokens: int
    new_tokens: int
    ttft_s: float
    decode_tokens_per_s: float
    prompt_tokens_per_s: float
    bytes_per_token: float | None = None
    bandwidth_bytes_per_s: float | None = None
    note: str = ""

    @property
    def roofline_tokens_per_s(self) -> float | None:
        if not self.bytes_per_token or not self.bandwidth_bytes_per_s:
            return None
        return roofline_tokens_per_s(self.bytes_per_token, self.bandwidth_bytes_per_s)

    @property
    def percent_of_roofline(self) -> float | None:
        roof = self.roofline_tokens_per_s
        return percent_of_roofline(self.decode_tokens_per_s, roof) if roof else None

    def as_row(self) -> dict:
        row = asdict(self)
        row["roofline_tokens_per_s"] = self.roofline_tokens_per_s
        row["percent_of_roofline"] = self.percent_of_roofline
        return row

    def __str__(self) -> str:
        roof = self.roofline_tokens_per_s
        tail = f" | roofline {roof:.0f} tok/s -> {self.percent_of_roofline:.0f}%" if roof else ""
        return (f"{self.runtime:<34} TTFT {self.ttft_s * 1000:7.0f} ms | decode {self.decode_tokens_per_s:7.1f} tok/s | "
                f"prompt {self.prompt_tokens_per_s:7.0f} tok/s{tail}")


def median(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan")
    return float(statistics.median(values))


def distinct_prompts(prompt: str, n: int) -> list[str]:
    """`n` versions of the prompt with a different first word, so no runtime can reuse the previous
    run's cached prompt (llama.cpp and its server keep the KV cache of a matching prefix)."""
    require_positive("n", n)
    words = ["Note", "Story", "Essay", "Draft", "Text", "Page", "Entry", "Item", "Piece", "Part"]
    return [f"{words[i % len(words)]} {i + 1}. {prompt}" for i in range(n)]


def benchmark(runtime: str, generate: Callable[[str], Any], prompt: str, runs: int = 3, warmup: int = 1,
              bytes_per_token: float | None = None, bandwidth_bytes_per_s: float | None = None,
              prompt_tokens: int | None = None, note: str = "") -> BenchResult:
    """Time `generate(prompt) -> Generation` `runs` times after `warmup` untimed runs; take medians.

    Each run gets a slightly different prompt (`distinct_prompts`). `prompt_tokens` overrides the
    count the Generation reports (a streaming server does not report it).
    """
    require_positive("runs", runs)
    require_positive("warmup", warmup, allow_zero=True)
    prompts = distinct_prompts(prompt, warmup + runs)
    for p in prompts[:warmup]:
        generate(p)
    gens = [generate(p) for p in prompts[warmup:]]
    if any(g.new_tokens < 2 for g in gens):
        raise LabkitError(f"{runtime}: a run produced fewer than 2 tokens, so decode speed is undefined. "
                          "Use a prompt the model continues, or a larger max_new_tokens.")
    n_prompt = prompt_tokens if prompt_tokens is not None else int(median([g.prompt_tokens for g in gens]))
    ttft = median([g.ttft_s for g in gens])
    return BenchResult(
        runtime=runtime, runs=runs, prompt_tokens=n_prompt, new_tokens=int(median([g.new_tokens for g in gens])),
        ttft_s=ttft, decode_tokens_per_s=median([g.decode_tokens_per_s for g in gens]),
        prompt_tokens_per_s=n_prompt / ttft if ttft > 0 else float("nan"),
        bytes_per_token=bytes_per_token, bandwidth_bytes_per_s=bandwidth_bytes_per_s, note=note,
    )


# ----------------------------------------------------------------------------- the roofline


def roofline_tokens_per_s(bytes_per_token: float, bandwidth_bytes_per_s: float) -> float:
    """The memory-bandwidth ceiling on decode speed (batch 1): bandwidth / bytes read per token."""
    require_positive("bytes_per_token", bytes_per_token)
    require_positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    return bandwidth_bytes_per_s / bytes_per_token


def percent_of_roofline(tokens_per_s: float, roofline: float) -> float:
    require_positive("tokens_per_s", tokens_per_s, allow_zero=True)
    require_positive("roofline", roofline)
    return 100.0 * tokens_per_s / roofline


def kv_cache_bytes_read(num_layers: int, num_kv_heads: int, head_dim: int, context_tokens: float,
                        bytes_per_value: float = 2, sliding_window: int | None = None,
                        sliding_layers: int = 0) -> float:
    """Bytes of K and V one decode step reads: 2 x layers x KV heads x head_dim x context x bytes.

    `sliding_layers` of the layers attend only to the last `sliding_window` tokens.
    """
    for name, value in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
        require_positive(name, value)
    require_positive("context_tokens", context_tokens, allow_zero=True)
    if not 0 <= sliding_layers <= num_layers:
        raise LabkitError(f"sliding_layers must be between 0 and num_layers={num_layers}, got {sliding_layers}")
    window_ctx = min(context_tokens, sliding_window) if sliding_window else context_tokens
    tokens_read = (num_layers - sliding_layers) * context_tokens + sliding_layers * window_ctx
    return 2.0 * num_kv_heads * head_dim * tokens_read * bytes_per_value


@dataclass(frozen=True)
class BytesPerToken:
    """What one decode step reads, split the way the roofline explanation needs it."""

    weights: float  # all weight bytes
    embedding_not_read: float  # the part of a separate (untied) input embedding a gather skips
    kv_cache: float

    @property
    def total(self) -> float:
        return self.weights - self.embedding_not_read + self.kv_cache

    def __str__(self) -> str:
        return (f"{self.total / 1e6:,.1f} MB per token = weights {self.weights / 1e6:,.1f} MB"
                f" - embedding rows not read {self.embedding_not_read / 1e6:,.1f} MB"
                f" + KV cache {self.kv_cache / 1e6:,.2f} MB")


def read_gguf_header(path: str | Path, max_array: int = 1024) -> tuple[dict[str, Any], list[GgufTensor]]:
    """A GGUF file's metadata and tensor table, read from its header only (fast; no weights loaded).

    Arrays longer than `max_array` (the tokenizer's vocabulary) are recorded as their length.
    The reader is `labkit.gguf_files.read_gguf` (one reader for the whole project).
    """
    info = read_gguf(path, max_array=max_array)
    return dict(info.metadata), list(info.tensors)


def gguf_tensor_types(path: str | Path) -> dict[str, dict]:
    """How a GGUF file's bytes split over tensor types: {type: {"tensors": n, "bytes": b, "share": f}}.

    A "Q4_K_M" file is a mix: some tensors get more bits (the embedding, attention V) than others.
    """
    return {k: {key: v[key] for key in ("tensors", "bytes", "share")}
            for k, v in read_gguf(path).tensor_types().items()}


def gguf_bytes_per_token(path: str | Path, context_tokens: float = 0, kv_bytes_per_value: float = 2) -> BytesPerToken:
    """Bytes a llama.cpp decode step reads, from a GGUF file's tensor table and metadata.

    llama.cpp keeps the KV cache in f16 (2 bytes) by default. Sliding windows are ignored (an upper bound).
    """
    meta, tensor_list = read_gguf_header(path)
    tensors = {t.name: t for t in tensor_list}
    weights = float(sum(t.n_bytes for t in tensor_list))
    skipped = 0.0
    embd = tensors.get("token_embd.weight")
    if embd is not None and "output.weight" in tensors:  # untied: the embedding is only gathered
        rows = int(embd.shape[-1])
        skipped = float(embd.n_bytes) * (rows - 1) / rows
    arch = meta.get("general.architecture")
    layers, heads = meta.get(f"{arch}.block_count"), meta.get(f"{arch}.attention.head_count")
    if not layers or not heads:
        raise LabkitError(f"{path}: no layer/head counts in the GGUF metadata for architecture {arch!r}")
    kv_heads = meta.get(f"{arch}.attention.head_count_kv") or heads
    k_len = meta.get(f"{arch}.attention.key_length") or (meta[f"{arch}.embedding_length"] // heads)
    v_len = meta.get(f"{arch}.attention.value_length") or k_len
    kv = kv_cache_bytes_read(layers, kv_heads, (k_len + v_len) / 2, context_tokens, kv_bytes_per_value)
    return BytesPerToken(weights, skipped, kv)


def model_bytes_per_token(model: Any, context_tokens: float = 0, kv_bytes_per_value: float | None = None) -> BytesPerToken:
    """Bytes a transformers decode step reads: parameter bytes (minus an untied embedding) + KV cache."""
    params = list(model.parameters())
    weights = float(sum(p.numel() * p.element_size() for p in params))
    skipped = 0.0
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embed.data_ptr()
    if not tied:
        skipped = float(embed.numel() * embed.element_size()) * (embed.shape[0] - 1) / embed.shape[0]
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    layer_types = list(getattr(cfg, "layer_types", None) or [])
    sliding = sum(1 for t in layer_types if t == "sliding_attention")
    window = getattr(cfg, "sliding_window", None) if sliding else None
    value_bytes = kv_bytes_per_value or (params[0].element_size() if params else 2)
    kv = kv_cache_bytes_read(cfg.num_hidden_layers, kv_heads, head_dim, context_tokens, value_bytes,
                             sliding_window=window, sliding_layers=sliding)
    return BytesPerToken(weights, skipped, kv)


def roofline_estimate(parameters_billion: float, bits_per_weight: float, bandwidth_gbps: float,
                      vram_gb: float | None = None) -> dict:
    """Back-of-the-envelope ceiling for a dense model: bytes = parameters x bits / 8 (KV cache ignored).

    Returns weights_gb, max_tokens_per_s, ms_per_token and, given vram_gb, whether the weights fit.
    """
    require_positive("parameters_billion", parameters_billion)
    require_positive("bits_per_weight", bits_per_weight)
    require_positive("bandwidth_gbps", bandwidth_gbps)
    weights = parameters_billion * 1e9 * bits_per_weight / 8
    tps = roofline_tokens_per_s(weights, bandwidth_gbps * 1e9)
    return {"weights_gb": weights / 1e9, "max_tokens_per_s": tps, "ms_per_token": 1000 / tps,
            "fits": None if vram_gb is None else weights / 1e9 <= vram_gb}


# ----------------------------------------------------------------------------- exercises


@exercise("02.roofline_tokens_per_s",
          hint="Bytes per token = parameters × bytes per parameter; tokens/s ≤ bandwidth in bytes/s "
               "(GB/s × 1e9) divided by that.", rtol=0.01,
          slips={"leaving the bandwidth in GB/s (multiply by 1e9 for bytes/s)": 1e-9,
                 "dividing by the parameter count alone, not by the bytes they take":
                     lambda expected, bytes_per_parameter, **_: expected * bytes_per_parameter})
def _expected_roofline(parameters: float, bytes_per_parameter: float, bandwidth_gbps: float) -> float:
    return roofline_tokens_per_s(parameters * bytes_per_parameter, bandwidth_gbps * 1e9)


@exercise("02.percent_of_roofline", hint="100 × measured tokens/s ÷ roofline tokens/s.", rtol=0.01,
          slips={"giving a fraction where a percentage is asked (x 100)": 0.01,
                 "dividing the roofline by the measurement (upside down)": lambda expected, **_: 1e4 / expected})
def _expected_percent(tokens_per_s: float, roofline: float) -> float:
    return percent_of_roofline(tokens_per_s, roofline)


@exercise("02.decode_tokens_per_s",
          hint="Decode speed leaves the first token out: (number of tokens − 1) ÷ (time of the last token − "
               "time of the first).", rtol=0.01,
          slips={"counting every token, the first too (n instead of n − 1)":
                     lambda expected, token_times: expected * len(token_times) / (len(token_times) - 1),
                 "dividing the time by the tokens (that is seconds per token)": lambda expected, **_: 1 / expected})
def _expected_decode(token_times: Sequence[float]) -> float:
    times = list(token_times)
    if len(times) < 2:
        raise LabkitError("token_times needs at least two tokens")
    return (len(times) - 1) / (times[-1] - times[0])


@validator("02.predict_thread_speedup",
           hint="Decoding reads every weight once per token, so it waits on memory more than on arithmetic: a "
                "second thread helps only until the memory bus is busy. Expect between 1x and 2x, nearer 1x when "
                "one thread already streams close to the bandwidth, nearer 2x for a small model that fits in cache.")
def _validate_thread_prediction(answer: Any, tokens_per_s_1: float, tokens_per_s_2: float,
                                tolerance: float = 0.35) -> str | None:
    """A prediction, made before measuring, of tokens/s with 2 threads ÷ with 1; checked against the run."""
    try:
        predicted = float(answer)
    except (TypeError, ValueError):
        return f"give your prediction as a number (the speed-up, e.g. 1.5), got {type(answer).__name__}"
    if not 0.5 <= predicted <= 2.5:
        return f"a {predicted:g}x speed-up from one thread to two is not what two cores can give"
    measured = tokens_per_s_2 / tokens_per_s_1
    if abs(predicted - measured) > tolerance * measured:
        way = "less" if predicted > measured else "more"
        return (f"you predicted {predicted:.2f}x and measured {measured:.2f}x: the second thread helped {way} "
                "than you expected. Which resource was the limit?")
    return None


# ----------------------------------------------------------------------------- showing results


def results_table(results: Sequence[BenchResult]) -> str:
    """A Markdown table (display it with IPython.display.Markdown, or print it)."""
    lines = ["| runtime | TTFT (ms) | decode (tok/s) | prompt (tok/s) | MB read / token | roofline (tok/s) | % of roofline |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        roof, pct = r.roofline_tokens_per_s, r.percent_of_roofline
        lines.append(f"| {r.runtime} | {r.ttft_s * 1000:.0f} | {r.decode_tokens_per_s:.1f} | {r.prompt_tokens_per_s:.0f} | "
                     f"{(r.bytes_per_token or float('nan')) / 1e6:,.0f} | {roof or float('nan'):.0f} | "
                     f"{'n/a' if pct is None else f'{pct:.0f}%'} |")
    return "\n".join(lines)


_WHY_ABOVE_A_COPY = ("a decode can beat it, because part of a small model's weights stays in the CPU's caches from one "
                     "token to the next, the runtime may read with more threads than the copy used, and a copy timed "
                     "while the machine was busy reads low.")


def ceiling_reading_markdown(measured_tokens_per_s: float, ceiling_tokens_per_s: float, bandwidth_gbps: float) -> str:
    """One run against its bandwidth ceiling, read from the values (notebook 00): a share of it, or above it and why."""
    share = measured_tokens_per_s / ceiling_tokens_per_s
    if share <= 1:
        return (f"The run reached **{share:.0%}** of the ceiling: real runs reach a share of it, because each token also "
                "pays for thread synchronisation, attention over the context and sampling.")
    return (f"The run went **above** the ceiling ({share:.0%} of it). The ceiling is only as good as the bandwidth behind "
            f"it, a timed copy ({bandwidth_gbps:,.1f} GB/s): {_WHY_ABOVE_A_COPY} On the H100, whose caches are small "
            "next to a model, every runtime stayed below its ceiling (notebook 02).")


def roofline_reading_markdown(results: Sequence[BenchResult], bandwidth_gbps: float) -> str:
    """What this run's percentages of the roofline say, from their values: all below 100%, or some above it and why
    that can happen with a bandwidth measured by a timed copy."""
    rated = [(r.runtime, r.percent_of_roofline) for r in results if r.percent_of_roofline is not None]
    if not rated:
        return ""
    over = [(name, pct) for name, pct in rated if pct > 100]
    if not over:
        best = max(rated, key=lambda x: x[1])
        return (f"Nobody reached 100% here: the closest was {best[0]} at **{best[1]:.0f}%** of its roofline. The roofline "
                "counts only the unavoidable bytes; real runs also pay for activations, thread synchronisation, Python "
                "and, on GPUs, kernel launches.")
    named = ", ".join(f"{name} **{pct:.0f}%**" for name, pct in over)
    return (f"Above 100% here: {named}. A roofline is only as good as its bandwidth, and this one is the session's timed "
            f"copy ({bandwidth_gbps:,.1f} GB/s): {_WHY_ABOVE_A_COPY} Read the percentages as a comparison between "
            "runtimes measured against the same figure, not as the share of a hard limit. On the H100, whose caches "
            "(tens of MB) are small next to a model, every runtime stayed below it (the committed numbers below).")


def plot_runtimes(results: Sequence[BenchResult], title: str = "One model, several runtimes"):
    """Two panels: TTFT per runtime, and decode tokens/s with each runtime's roofline drawn over its bar."""
    import matplotlib.pyplot as plt

    if not results:
        raise LabkitError("plot_runtimes needs at least one BenchResult")
    names = [r.runtime for r in results]
    fig, (ax_ttft, ax_tps) = plt.subplots(1, 2, figsize=(max(11, 1.7 * len(results)), 4.6))
    ax_ttft.bar(names, [r.ttft_s * 1000 for r in results], color="#8da0cb")
    ax_ttft.set_ylabel("time to first token (ms)")
    ax_ttft.set_title("Latency: time to first token")
    bars = ax_tps.bar(names, [r.decode_tokens_per_s for r in results], color="#66c2a5", label="measured")
    labelled = False
    for bar, r in zip(bars, results):
        roof = r.roofline_tokens_per_s
        if roof is None:
            continue
        x0, w = bar.get_x(), bar.get_width()
        ax_tps.hlines(roof, x0 - 0.1 * w, x0 + 1.1 * w, colors="#d62728", linestyles="--", linewidth=2,
                      label=None if labelled else "roofline (bandwidth / bytes per token)")
        labelled = True
        ax_tps.annotate(f"{r.percent_of_roofline:.0f}%", (x0 + w / 2, r.decode_tokens_per_s), ha="center",
                        va="bottom", fontsize=9)
    ax_tps.set_ylabel("decode tokens / s")
    ax_tps.set_title("Throughput vs the memory-bandwidth roofline")
    top = max([r.decode_tokens_per_s for r in results] + [r.roofline_tokens_per_s or 0 for r in results])
    ax_tps.set_ylim(0, top * 1.25)  # room for the legend above the highest roofline
    ax_tps.legend(loc="upper left", fontsize=8)
    for ax in (ax_ttft, ax_tps):
        plt.setp(ax.get_xticklabels(), rotation=30 if len(results) > 3 else 15, ha="right", rotation_mode="anchor")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def load_benchmark_results(name: str = "decode_roofline") -> dict:
    """The committed results of benchmarks/<name>.py (datasets/results/<name>.json, shipped with labkit).
    They ship in every install, so a missing file raises LabkitError (a broken install) instead of vanishing."""
    import json

    from .paths import shipped_file

    return json.loads(shipped_file("results", f"{name}.json").read_text())


GPU_VARIANT_LABELS = {
    "plain": "generate (eager)",
    "static_eager": "generate + static cache",
    "static_compiled": "generate + static cache + compile",
    "compiled_loop": "compiled decode loop",
}


def committed_gpu_results(results: dict | None = None) -> list[BenchResult]:
    """The committed GPU benchmark (datasets/results/decode_roofline.json) as BenchResults, or []."""
    results = results if results is not None else load_benchmark_results()
    if not results:
        return []
    bpt = results["bytes_per_token"]["total"]
    rows = []
    order = list(GPU_VARIANT_LABELS)
    variants = sorted(results["variants"], key=lambda v: order.index(v["variant"]) if v["variant"] in order else 99)
    for v in variants:
        if "decode_tokens_per_s" not in v:
            continue
        roof = v.get("roofline_measured_tokens_per_s", results["roofline_measured_tokens_per_s"])
        rows.append(BenchResult(
            runtime=GPU_VARIANT_LABELS.get(v["variant"], v["variant"]), runs=len(v.get("runs", [])),
            prompt_tokens=results["prompt_tokens"], new_tokens=results["new_tokens"], ttft_s=v["ttft_s"],
            decode_tokens_per_s=v["decode_tokens_per_s"], prompt_tokens_per_s=v["prompt_tokens_per_s"],
            bytes_per_token=bpt, bandwidth_bytes_per_s=roof * bpt,
            note=f"{results.get('gpu', 'GPU')}, {results['model']} (random weights, {results['dtype']})"))
    return rows


def committed_llama_cpp_gpu_results(results: dict | None = None, flash_attn: bool = True) -> list[BenchResult]:
    """The committed llama.cpp-on-CUDA benchmark (datasets/results/llama_cpp_cuda.json): the same
    Llama 3.1 8B architecture as `committed_gpu_results`, as GGUF F16 / Q8_0 / Q4_K_M files, or []."""
    results = results if results is not None else load_benchmark_results("llama_cpp_cuda")
    if not results:
        return []
    bandwidth = results["bandwidth_gbps"] * 1e9
    return [BenchResult(runtime=f"llama.cpp CUDA {r['gguf_type']}", runs=results["runs"],
                        prompt_tokens=r["prompt_tokens"], new_tokens=results["new_tokens"], ttft_s=r["ttft_ms"] / 1000,
                        decode_tokens_per_s=r["decode_tokens_per_s"], prompt_tokens_per_s=r["prompt_tokens_per_s"],
                        bytes_per_token=r["bytes_per_token"], bandwidth_bytes_per_s=bandwidth,
                        note=f"{results.get('gpu', 'GPU')}, llama-3.1-8b architecture (random weights) as GGUF "
                             f"{r['gguf_type']}, flash attention {'on' if r['flash_attn'] else 'off'}")
            for r in results.get("results", []) if r["flash_attn"] == flash_attn]
