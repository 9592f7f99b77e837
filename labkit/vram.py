"""VRAM math: predict how much memory a model needs (estimating; labkit.vram_measure measures).

Memory for inference is four parts:

    weights      parameters x bytes per parameter (plus the scales a quantized format stores)
    kv_cache     2 (K and V) x layers x kv_heads x head_dim x tokens x bytes, per layer type
    activations  the temporary tensors of the forward pass; the peak is during prefill and grows
                 with the prompt: the MLP's intermediate tensors, the attention scores on the eager
                 path, the masks, and the hidden states transformers keeps alive
    overhead     what the runtime costs before it does anything: the CUDA context, library
                 workspaces

`estimate_inference` models what transformers (or llama.cpp) actually allocates, layer type by
layer type; `labkit.vram_measure.measure_inference` runs the real thing and reports the same five
numbers, so the two print side by side. `estimate_training` does the same for full fine-tuning,
LoRA and QLoRA; `split_tensor_parallel` and `fits` answer "which GPUs, and how many". The tables
notebook 03 prints and its exercises close the module.

The benchmark `benchmarks/vram_accuracy.py` measures the estimate's error on an H100 for ten real
architectures (random weights) in bf16, fp16, int8 and nf4 from 512 to 32k tokens: within 0.7% for
bf16/fp16 and 3.6% for the quantized formats (datasets/results/vram_accuracy.md, and notebook 03);
a third pass on an H200 adds the mixture-of-experts families of transformers 5 (Qwen3-30B-A3B,
Qwen1.5-MoE, OLMoE, Granite MoE, gpt-oss-20b) in bf16, within 0.25%.

Any model a learner brings: the model's shape comes from labkit.architecture (a shipped name, a
config dict or transformers config, a config.json path or a Hub id), re-exported here as
`vram.architecture` and `vram.parameter_count` for notebook 03. The formulas cover FORMULA_FAMILIES;
other causal LMs get their weights from the meta tensors, and their prefill and training step traced on the
meta device (labkit.vram_trace; the training model is labkit.vram_training), with a band measured on held-out
families (labkit.vram_band), or a refusal where that band would exceed 10%.
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

from . import vram_trace, vram_training
from .architecture import (
    Architecture,
    architecture,
    parameter_count,
    weight_check,
    weight_tensors,
)
from .check import BITS_FOR_BYTES, GB_FOR_GIB, exercise, validator
from .dtypes import BITS_PER_WEIGHT, bytes_per_weight, normalize_dtype
from .errors import LabkitError, require_positive, unknown
from .formatting import GIB, MIB
from .hardware import detect_hardware, find_gpu, usable_memory
from .vram_band import band_for

FLOAT_DTYPES = ("fp32", "fp16", "bf16")
BNB_DTYPES = ("int8", "int4", "nf4")  # bitsandbytes: LLM.int8() and 4-bit (FP4 / NF4)
GGUF_DTYPES = tuple(d for d in BITS_PER_WEIGHT if d.startswith(("Q", "IQ")))
RUNTIMES = ("transformers", "llama.cpp")
TRAINING_METHODS = ("full", "lora", "qlora")
OPTIMIZERS = ("adamw", "adamw8bit", "sgd")

# Bits per element of a KV cache. Quantized caches store scales too: Q8_0 / Q4_0 (llama.cpp) as in
# their weight formats; transformers' quantized cache (quanto/HQQ, int4 / int2) keeps a scale and a
# zero point per group of 64 values, in fp16.
KV_BITS = {"fp32": 32.0, "fp16": 16.0, "bf16": 16.0, "fp8": 8.0, "int8": 8.0 + 32 / 64,
           "int4": 4.0 + 32 / 64, "int2": 2.0 + 32 / 64, "Q8_0": 8.5, "Q4_0": 4.5}

# --- bitsandbytes storage (bitsandbytes 0.4x-0.50, as transformers loads it) -------------------
# 4-bit: two weights per byte; one absmax per block of 64 weights. With double quantization
# (QLoRA's default) the absmax values are themselves stored in 8 bits, with one fp32 absmax per
# block of 256 of them; without it each absmax is an fp32.
BNB_4BIT_BLOCK = 64
BNB_NESTED_BLOCK = 256
# LLM.int8(): one int8 per weight plus one fp32 scale (SCB) per output row.

# --- runtime overhead -------------------------------------------------------------------------
# The CUDA context of a PyTorch process (driver state, the kernels loaded lazily as they are first
# used) and cuBLAS's workspace. Measured on an H100 (torch 2.11, CUDA 13): see
# datasets/results/vram_accuracy.md. Other GPUs and drivers differ by a few hundred MiB; pass
# `overhead_bytes=` to use your own (measure_inference reports it).
CUDA_CONTEXT_BYTES = 690 * MIB
CUBLAS_WORKSPACE_BYTES = 32 * MIB  # allocated through PyTorch's allocator at the first matmul
# LLM.int8() loads cuBLASLt's int8 kernels into the context; bitsandbytes 4-bit adds nothing measurable
BNB_INT8_EXTRA_BYTES = 66 * MIB
LLAMA_CPP_CUDA_CONTEXT_BYTES = 300 * MIB  # a CUDA context without PyTorch's kernels (not measured here)
LLAMA_CPP_CPU_OVERHEAD_BYTES = 48 * MIB  # the process's growth beyond tensors with llama-cpp-python (2 cores)
# A CPU process pays no CUDA context; what the resident set grows by beyond the tensors is the
# allocator's and the thread pools' working memory: 0.17-0.28 GiB measured on a 2-core CPU machine
# (torch 2.13) for models of 0.3-1.2 B parameters.
CPU_OVERHEAD_BYTES = 240 * MIB


def weight_bytes(model: Any, dtype: str = "bf16", double_quant: bool = True, compute_dtype: str = "bf16") -> dict[str, float]:
    """Bytes of the weights in `dtype`, split into what is quantized and what is not.

    - fp32 / fp16 / bf16: every tensor in that dtype.
    - int8 (bitsandbytes LLM.int8()): each nn.Linear as int8 + one fp32 scale per output row; the
      embeddings, the lm_head, the norms, biases and (in transformers) the 3-D expert tensors of a
      mixture of experts stay in `compute_dtype`.
    - int4 / nf4 (bitsandbytes 4-bit): each nn.Linear at 4 bits + its block scales (see
      BNB_4BIT_BLOCK; double quantization stores them in 8 bits); the rest as for int8.
    - GGUF types (Q8_0 ... Q2_K): every tensor at the type's effective bits per weight (a K-quant
      file mixes types per tensor; the effective figure is the whole file's average), except the
      output matrix, which llama.cpp's quantizer keeps at Q6_K (Q8_0 when it is the tied embedding).
    """
    dtype = normalize_dtype(dtype)
    tensors = weight_tensors(model)
    total = sum(t.numel for t in tensors)
    fp32 = sum(t.numel for t in tensors if t.keep_fp32)  # float32 whatever the dtype (GPT-OSS's norms)
    if dtype in FLOAT_DTYPES:
        return {"quantized": 0.0, "unquantized": (total - fp32) * BITS_PER_WEIGHT[dtype] / 8 + fp32 * 4, "scales": 0.0}
    if dtype in GGUF_DTYPES:
        out = next((t for t in tensors if t.kind == "lm_head"), None)
        tied = out is None
        out = out or next(t for t in tensors if t.kind == "embedding")
        out_bits = max(BITS_PER_WEIGHT[dtype], BITS_PER_WEIGHT["Q8_0" if tied else "Q6_K"])
        rest = total - out.numel
        return {"quantized": (rest * BITS_PER_WEIGHT[dtype] + out.numel * out_bits) / 8, "unquantized": 0.0,
                "scales": 0.0}
    keep = BITS_PER_WEIGHT[normalize_dtype(compute_dtype)] / 8
    linear = [t for t in tensors if t.kind == "linear"]
    n_linear = sum(t.numel for t in linear)
    unquantized = (total - n_linear - fp32) * keep + fp32 * 4
    if dtype == "int8":
        scales = sum(t.shape[0] * t.count * 4 for t in linear)
        return {"quantized": float(n_linear), "unquantized": unquantized, "scales": float(scales)}
    blocks = n_linear / BNB_4BIT_BLOCK
    scales = blocks * 1 + blocks / BNB_NESTED_BLOCK * 4 if double_quant else blocks * 4
    return {"quantized": n_linear / 2, "unquantized": unquantized, "scales": scales}


# ============================================================================ KV cache


def kv_cache_bytes_per_token(model: Any, kv_dtype: str = "bf16") -> dict[str, float]:
    """Bytes one token adds to the cache, per layer type: {"full": ..., "sliding": ...} (summed over layers)."""
    a = architecture(model)
    bits = _kv_bits(kv_dtype)
    if a.is_mla:  # transformers caches the compressed latent and the shared RoPE key (one "head")
        per_layer = (a.kv_lora_rank + a.qk_rope_dim) * bits / 8
    else:
        per_layer = a.num_kv_heads * (a.head_dim + a.v_head_dim) * bits / 8
    return {kind: per_layer * a.layer_types.count(kind) for kind in ("full", "sliding")}


def kv_cache_bytes(model: Any, tokens: int, batch: int = 1, kv_dtype: str = "bf16") -> float:
    """The KV cache for `tokens` tokens of `batch` sequences: full-attention layers hold every token,
    sliding-window layers at most the window."""
    a = architecture(model)
    per = kv_cache_bytes_per_token(a, kv_dtype)
    window_tokens = min(tokens, a.sliding_window) if a.sliding_window else tokens
    return batch * (per["full"] * tokens + per["sliding"] * window_tokens)


def kv_cache_bytes_per_layer(model: Any, tokens: int, batch: int = 1, kv_dtype: str = "bf16") -> list[float]:
    """The cache of each layer, in layer order: a full-attention layer holds every token, a
    sliding-window layer at most the window. Sums to `kv_cache_bytes`."""
    a = architecture(model)
    per = kv_cache_bytes_per_token(a, kv_dtype)
    window_tokens = min(tokens, a.sliding_window) if a.sliding_window else tokens
    one = {kind: per[kind] / a.layer_types.count(kind) if per[kind] else 0.0 for kind in per}
    return [batch * one[kind] * (window_tokens if kind == "sliding" else tokens) for kind in a.layer_types]


def kv_cache_formula_bytes(layers: int, kv_heads: int, head_dim: int, tokens: int, bytes_per_value: float,
                           batch: int = 1) -> float:
    """The textbook formula: 2 (K and V) x layers x kv_heads x head_dim x tokens x bytes (x batch)."""
    return 2 * layers * kv_heads * head_dim * tokens * bytes_per_value * batch


def _kv_bits(kv_dtype: str) -> float:
    for name, bits in KV_BITS.items():
        if str(kv_dtype).lower() == name.lower():
            return bits
    try:
        canonical = normalize_dtype(kv_dtype)
    except LabkitError:
        canonical = None
    if canonical in KV_BITS:
        return KV_BITS[canonical]
    raise unknown("KV-cache dtype", kv_dtype, KV_BITS)


# ============================================================================ the estimate


@dataclass
class MemoryEstimate:
    """Memory in bytes, by part. `kind` is "estimate" or "measured"; `details` breaks the parts down."""

    weights: float
    kv_cache: float
    activations: float
    overhead: float
    gradients: float = 0.0
    optimizer_states: float = 0.0
    kind: str = "estimate"
    label: str = ""
    details: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    # For a model type without a formula: the relative half-width of the band the true peak was found in on
    # families no formula knows (labkit.vram_band.GENERIC_BANDS), and where that figure comes from.
    # 0: a formula family.
    band: float = 0.0
    band_source: str = ""

    PARTS = ("weights", "kv_cache", "gradients", "optimizer_states", "activations", "overhead")

    @property
    def total(self) -> float:
        return sum(getattr(self, p) for p in self.PARTS)

    def parts(self) -> dict[str, float]:
        """The non-zero parts, in bytes, in print order."""
        return {p: getattr(self, p) for p in self.PARTS if getattr(self, p) or p in ("weights", "activations")}

    def gib(self) -> dict[str, float]:
        return {**{p: v / GIB for p, v in self.parts().items()}, "total": self.total / GIB}

    def __repr__(self) -> str:
        shown = ", ".join(f"{p}={v / GIB:.2f}" for p, v in self.parts().items())
        title = f"{self.kind}{' ' + self.label if self.label else ''}"
        band = f" ±{self.band:.0%}" if self.band else ""
        return f"<{title}: total {self.total / GIB:.2f} GiB{band} ({shown} GiB)>"

    @property
    def band_text(self) -> str:
        """'' for a formula family, else the band as a learner reads it."""
        if not self.band:
            return ""
        low, high = self.total * (1 - self.band) / GIB, self.total * (1 + self.band) / GIB
        return (f"±{self.band:.0%}: {low:.2f} to {high:.2f} GiB (no formula for this model type; band measured on "
                f"{self.band_source})")

    def table(self, other: MemoryEstimate | None = None) -> str:
        """A text table of the parts in GiB; with `other`, the two side by side and the error."""
        names = list(dict.fromkeys([*self.parts(), *(other.parts() if other else [])]))
        band = [f"band {self.band_text}"] if self.band else []
        if other is None:
            rows = [f"{n:<17}{getattr(self, n) / GIB:>10.2f}" for n in names]
            return "\n".join([f"{'GiB':<17}{self.kind:>10}", *rows, f"{'total':<17}{self.total / GIB:>10.2f}", *band])
        rows = [f"{n:<17}{getattr(self, n) / GIB:>10.2f}{getattr(other, n) / GIB:>10.2f}" for n in names]
        err = (self.total - other.total) / other.total * 100 if other.total else float("nan")
        return "\n".join([f"{'GiB':<17}{self.kind:>10}{other.kind:>10}", *rows,
                          f"{'total':<17}{self.total / GIB:>10.2f}{other.total / GIB:>10.2f}",
                          f"error of the {self.kind}: {err:+.1f}%", *band])


def estimate_inference(model: Any, dtype: str = "bf16", context: int = 4096, batch: int = 1, new_tokens: int = 0,
                       kv_dtype: str | None = None, runtime: str | None = None, device: str = "cuda",
                       attention: str | None = None, double_quant: bool = True,
                       overhead_bytes: float | None = None, int8_outlier_fraction: float = 0.0) -> MemoryEstimate:
    """Peak memory to run `model` on `context` prompt tokens (x `batch`) and generate `new_tokens` more.

    - model: a shipped config name ("llama-3.1-8b"), a config dict or a transformers config.
    - dtype: fp32, fp16, bf16; int8, nf4 / int4 (bitsandbytes); or a GGUF type (Q8_0 ... Q2_K).
    - runtime: "transformers" (the default for torch and bitsandbytes dtypes) or "llama.cpp" (the
      default for GGUF types).
    - device: "cuda" (VRAM: adds the CUDA context) or "cpu" (RAM).
    - attention: "sdpa" or "eager"; default: what transformers picks for this model.
    - int8_outlier_fraction: for int8, the share of a layer's input columns LLM.int8() treats as
      outliers (an |x| >= 6 somewhere in the prompt). Trained models have a handful (the default
      0 ignores them); random weights of 4096-wide models put 80-100% there, which costs up to
      9 bytes per weight of the largest matrix, briefly.
    """
    a = architecture(model)
    dtype = normalize_dtype(dtype)
    for name, value in (("context", context), ("batch", batch)):
        _require_int(name, value)
    _require_int("new_tokens", new_tokens, allow_zero=True)
    runtime = runtime or ("llama.cpp" if dtype in GGUF_DTYPES else "transformers")
    if runtime not in RUNTIMES:
        raise unknown("runtime", runtime, RUNTIMES)
    if device not in ("cuda", "cpu"):
        raise unknown("device", device, ("cuda", "cpu"))
    if runtime == "transformers" and dtype in GGUF_DTYPES:
        raise LabkitError(f"{dtype} is a GGUF (llama.cpp) type; transformers de-quantizes GGUF files on load. "
                          "Use runtime='llama.cpp', or a transformers dtype: fp32, fp16, bf16, int8, nf4.")
    if runtime == "llama.cpp" and dtype in BNB_DTYPES:
        raise LabkitError(f"{dtype} is a bitsandbytes format (transformers). For llama.cpp use a GGUF type: "
                          f"{', '.join(GGUF_DTYPES)}, or fp16 / fp32.")
    if not 0 <= int8_outlier_fraction <= 1:
        raise LabkitError(f"int8_outlier_fraction must be between 0 and 1, got {int8_outlier_fraction!r}")
    if attention is not None and attention not in ("sdpa", "eager"):
        raise unknown("attention implementation", attention, ("sdpa", "eager"))
    tokens = context + new_tokens
    notes: list[str] = []
    beyond = beyond_window(a, tokens)
    if beyond:
        message = window_warning(a, tokens)
        warnings.warn(message, stacklevel=2)
        notes.append(message)
    notes.append(str(weight_check(a)))
    compute = dtype if dtype in FLOAT_DTYPES else ("fp16" if runtime == "llama.cpp" else "bf16")
    kv_dtype = kv_dtype or compute
    w = weight_bytes(a, dtype, double_quant=double_quant, compute_dtype=compute)
    weights = w["quantized"] + w["unquantized"] + w["scales"]
    details = {f"weights: {k}": v for k, v in w.items() if v}
    if runtime == "llama.cpp":
        kv = kv_cache_bytes(a, tokens, batch, kv_dtype)
        act = _llama_cpp_compute_buffer(a, tokens, batch, device)
        details["activations: compute buffer"] = act
        overhead = LLAMA_CPP_CUDA_CONTEXT_BYTES if device == "cuda" else LLAMA_CPP_CPU_OVERHEAD_BYTES
    else:
        attention = attention or a.attention
        kv = kv_cache_bytes(a, tokens, batch, kv_dtype)
        if a.generic:
            peak = _generic_peak(a, dtype, compute, kv_dtype, context, new_tokens, batch, attention, device,
                                 int8_outlier_fraction)
            kv = peak.get("kv_steady", kv)
            notes.extend(peak["notes"])
        else:
            peak = _transformers_peak(a, dtype, compute, kv_dtype, context, new_tokens, batch, attention, device,
                                      int8_outlier_fraction)
        details.update(peak["details"])
        kv_at_peak = peak["kv"]
        # the steady-state cache is `kv`; anything the peak holds beyond it counts as activations
        act = peak["activations"] + max(0.0, kv_at_peak - kv)
        if kv_at_peak > kv:
            details["activations: prompt K/V still held by sliding-window layers"] = kv_at_peak - kv
        overhead = (CUDA_CONTEXT_BYTES + CUBLAS_WORKSPACE_BYTES + (BNB_INT8_EXTRA_BYTES if dtype == "int8" else 0)
                    if device == "cuda" else CPU_OVERHEAD_BYTES)
    if overhead_bytes is not None:
        require_positive("overhead_bytes", overhead_bytes, allow_zero=True)
        overhead = float(overhead_bytes)
    band, band_source = 0.0, ""
    if a.generic:
        if runtime == "llama.cpp":
            kind = "llama.cpp"
        elif not peak["traced"]:
            kind = "experts routed in a loop (not traceable)"
        else:
            kind = "inference, bitsandbytes (traced)" if dtype in BNB_DTYPES else "inference (traced)"
        band, band_source = band_for(kind, f"{a.model_type}'s forward pass depends on the values it computes (a loop "
                                           "over the experts the router picked), so it cannot be traced, and the "
                                           "standard decoder layer does not know what each step of that loop holds")
    return MemoryEstimate(
        weights=weights, kv_cache=kv, activations=act, overhead=overhead, label=f"{a.name} {dtype} {runtime}",
        details=details, notes=notes, band=band, band_source=band_source,
        inputs=dict(model=a.name, dtype=dtype, context=context, batch=batch, new_tokens=new_tokens, kv_dtype=kv_dtype,
                    runtime=runtime, device=device, attention=attention, method="inference",
                    max_context=a.max_position, beyond_max_context=beyond, architecture=a),
    )


def window_warning(model: Any, tokens: int) -> str:
    """What the estimate says (and warns) when `tokens` is beyond the model's context window."""
    a = architecture(model)
    return (f"⚠ {a.name}: {tokens:,} tokens is beyond the model's maximum context of {a.max_position:,}; "
            "the memory is computed anyway, but the model was not trained for it.")


def _require_int(name: str, value: Any, allow_zero: bool = False) -> None:
    require_positive(name, value, allow_zero=allow_zero)
    if not float(value).is_integer():
        raise LabkitError(f"{name} must be a whole number, got {value!r}")


# ---------------------------------------------------------------------------- transformers' peak


def _transformers_peak(a: Architecture, dtype: str, compute: str, kv_dtype: str, context: int, new_tokens: int,
                       batch: int, attention: str, device: str, int8_outliers: float = 0.0) -> dict[str, Any]:
    """The highest point of memory during `generate`: the prefill, in the last layer.

    What is alive, as transformers (5.x) runs a decoder layer:
    - for the whole forward: the input embeddings, the current layer's input, RoPE's cos/sin, the
      attention masks (only built for a sliding window shorter than the prompt, or
      always on the eager path), and the KV cache of the layers so far; a sliding-window layer
      still holds the whole prompt's K/V during prefill (it keeps a view of the full tensor until
      the first decode step);
    - then, step by step: the input norm (float32 copies), the attention (q, k, v, the RoPE
      temporaries, the scores on the eager path), the second norm, and the MLP (the residual, the
      normalized input and the intermediate tensors). The largest step is the peak.
    """
    e = BITS_PER_WEIGHT[compute] / 8  # bytes per activation value
    L = a.num_layers
    kv_token_layer = sum(kv_cache_bytes_per_token(a, kv_dtype).values()) / L  # one token, one layer
    details, prefill_act, kv_at_peak = _prefill(a, context, batch, e, kv_token_layer, attention, device, dtype,
                                                int8_outliers)
    best = {"activations": prefill_act, "kv": kv_at_peak, "details": details}
    if new_tokens:
        # decode: the cache grows by one token per step; concatenating copies one layer's cache
        logits = details["activations: last-token logits"]
        decode_kv = kv_cache_bytes(a, context + new_tokens, batch, kv_dtype)
        decode = {"one layer's cache being concatenated": kv_token_layer * batch * (context + new_tokens),
                  "last-token logits": logits}
        if a.is_moe and device == "cuda":
            # on a GPU transformers decodes a mixture of experts with batched_mm, which gathers a
            # copy of each chosen expert's weights for every token
            decode["chosen experts' weights, gathered"] = batch * a.experts_per_token * 3 * a.hidden_size * \
                a.expert_intermediate * e
        decode_act = sum(decode.values())
        if decode_kv + decode_act > prefill_act + kv_at_peak:
            best = {"activations": decode_act, "kv": decode_kv,
                    "details": {f"activations: decode: {k}": v for k, v in decode.items()}}
    reset = a.cache_reset_tokens
    if reset and context <= reset < context + new_tokens:
        # Phi-3 drops its cache and runs the whole sequence again when generation crosses
        # original_max_position_embeddings (its RoPE scaling changes there); the old cache is
        # still referenced while the new prefill runs.
        d2, act2, kv2 = _prefill(a, reset + 1, batch, e, kv_token_layer, attention, device, dtype, int8_outliers)
        old = kv_token_layer * batch * context * L
        if act2 + kv2 + old > best["activations"] + best["kv"]:
            d2["activations: the old cache, kept while the prompt is re-run"] = old
            best = {"activations": act2 + old, "kv": kv2, "details": d2}
    return best


def _prefill(a: Architecture, context: int, batch: int, e: float, kv_token_layer: float, attention: str, device: str,
             dtype: str, int8_outliers: float = 0.0) -> tuple[dict[str, float], float, float]:
    """(details, activations, KV held) at the prefill's peak."""
    T = batch * context  # prompt tokens in the batch
    h, L = a.hidden_size, a.num_layers
    persistent = {
        "hidden states (embeddings, layer input)": (2 if L > 1 else 1) * T * h * e,
        "RoPE cos/sin": _rope_bytes(a, T, e),
    }
    masks = _mask_bytes(a, batch, context, e, attention)
    if masks:
        persistent["attention masks"] = masks
    steps = _layer_steps(a, a.layer_kinds()[-1], T, batch, context, e, attention, device, dtype, int8_outliers)
    layers_before = {name: L if name in ("post-attention norm", "mlp") else L - 1 for name in steps}
    if attention == "sdpa" and _sliding_mask(a, context):  # the mask step runs in the last sliding layer
        layers_before["attention: scores"] = max(i for i, k in enumerate(a.layer_types) if k == "sliding")
    kv_before = {name: kv_token_layer * T * n for name, n in layers_before.items()}
    best = max(steps, key=lambda s: sum(steps[s].values()) + kv_before[s])
    details = {f"activations: {k}": v for k, v in persistent.items()}
    details.update({f"activations: {best}: {k}": v for k, v in steps[best].items()})
    logits = batch * a.vocab_size * (e + 4 * 3)  # the last position's logits, as float32 scores
    details["activations: last-token logits"] = logits
    return details, sum(persistent.values()) + sum(steps[best].values()) + logits, kv_before[best]


def experts_dispatch(model: Any) -> str | None:
    """How transformers runs the experts of `model` (None for a dense model): "grouped", "every expert" or
    "loop" (EXPERT_DISPATCH says what each means for memory)."""
    a = architecture(model)
    return vram_trace.experts_dispatch(a.model_type) if a.is_moe else None


def _generic_peak(a: Architecture, dtype: str, compute: str, kv_dtype: str, context: int, new_tokens: int,
                  batch: int, attention: str, device: str, int8_outliers: float = 0.0) -> dict[str, Any]:
    """The peak of `generate` for a model type without a formula: its prefill traced on the meta device (every
    tensor transformers makes, with the fused SDPA kernels standing in for the math path; see
    `vram_trace.trace_prefill`), then the decode steps. bitsandbytes' own temporaries (de-quantized weights, LLM.int8()'s
    buffers) come from the standard-decoder formula. A forward pass that routes tokens to experts in a Python
    loop cannot be traced: the standard-decoder formula then stands in, with a wider band."""
    formula = _transformers_peak(a, dtype, compute, kv_dtype, context, new_tokens, batch, attention, device,
                                 int8_outliers)
    trace_dtype = compute if compute in FLOAT_DTYPES else "bf16"
    raw = json.loads(a.config_json)
    use_cache = (raw.get("text_config") or raw).get("use_cache", True) is not False
    # a config with use_cache false makes generate run without a cache: every step re-runs the whole sequence
    tokens = context if use_cache else context + max(new_tokens - 1, 0)
    try:
        peak, kv_at_peak, kv_end, top, end = vram_trace.trace_prefill(a.config_json, trace_dtype, tokens, batch,
                                                                      attention, device, use_cache)
    except vram_trace.DataDependent as err:
        return {**formula, "traced": False,
                "notes": [f"{err} The prefill is modelled as a standard decoder layer instead."]}
    e = BITS_PER_WEIGHT[compute] / 8
    details = {f"activations: prefill (traced on the meta device): made by {op}": size for op, size in top}
    rest = peak - kv_at_peak - sum(size for _, size in top)
    details["activations: prefill (traced on the meta device): the rest"] = rest
    notes = [f"{a.model_type}: no formula for this model type; the prefill was traced on the meta device (every "
             "tensor transformers makes, shapes only) and the decode steps follow the standard decoder"]
    if kv_dtype != trace_dtype:  # the trace holds the cache in the compute dtype
        scale = _kv_bits(kv_dtype) / (BITS_PER_WEIGHT[trace_dtype])
        kv_at_peak, kv_end = kv_at_peak * scale, kv_end * scale
    act = peak - kv_at_peak
    if dtype in BNB_DTYPES:  # bitsandbytes' temporaries, from the formula: its prefill minus the same in bf16
        plain = _transformers_peak(a, "bf16", compute, kv_dtype, context, 0, batch, attention, device)
        bnb = _transformers_peak(a, dtype, compute, kv_dtype, context, 0, batch, attention, device, int8_outliers)
        extra = max(0.0, bnb["activations"] - plain["activations"])
        details["activations: bitsandbytes temporaries (formula)"] = extra
        act += extra
    # after the forward pass (its temporaries freed) generate turns the last position's logits into float32
    # scores: the cache and the logits the trace ends with, plus those
    logits = batch * a.vocab_size * (e + 4 * 3)
    after = end - kv_end + batch * a.vocab_size * 4 * 3
    if after > act:
        details = {"activations: after the prefill: the logits and their float32 scores": after}
        act = after
    if not use_cache:  # no cache: the largest step is the last one, the whole sequence again
        notes.append(f"{a.model_type}: its config sets use_cache false, so generate keeps no KV cache and re-runs "
                     "the whole sequence for every new token")
        return {"activations": act, "kv": 0.0, "details": details, "kv_steady": 0.0, "traced": True, "notes": notes}
    kv_formula = kv_cache_bytes(a, context, batch, kv_dtype)
    per_token = kv_end / (context * batch)
    if abs(kv_formula - kv_end) <= 0.03 * kv_end:
        kv_steady = kv_cache_bytes(a, context + new_tokens, batch, kv_dtype)
    else:  # the config's fields do not give the cache transformers keeps (e.g. multi-head latent attention)
        kv_steady = per_token * batch * (context + new_tokens)
        notes.append(f"KV cache: {per_token / 1024:.1f} KiB per token, as transformers' cache held it after the trace "
                     f"(the config's heads would give {kv_formula / (context * batch) / 1024:.1f})")
    # the prefill's peak holds the cache of the layers so far (the whole prompt's, sliding windows included);
    # reported as the steady cache plus what the peak holds beyond it
    best = {"activations": act + kv_at_peak - kv_steady, "kv": kv_steady, "details": details}
    if kv_at_peak < kv_steady:
        details["activations: prefill: the cache the later layers and new tokens add (not yet there)"] = kv_at_peak - kv_steady
    if new_tokens:
        decode = {"one layer's cache being concatenated": kv_steady / a.num_layers, "last-token logits": logits}
        if a.is_moe and device == "cuda" and vram_trace.experts_dispatch(a.model_type) == "grouped":
            decode["chosen experts' weights, gathered"] = batch * a.experts_per_token * 3 * a.hidden_size * \
                a.expert_intermediate * e
        if sum(decode.values()) > best["activations"]:
            best = {"activations": sum(decode.values()), "kv": kv_steady,
                    "details": {f"activations: decode: {k}": v for k, v in decode.items()}}
    return {**best, "kv_steady": kv_steady, "traced": True, "notes": notes}


def _rope_bytes(a: Architecture, T: int, e: float) -> float:
    if a.is_mla:  # DeepSeek keeps RoPE as complex64 frequencies over half the rotary width
        return T * a.rotary_dim // 2 * 8
    return a.rotary_sets * 2 * T * a.rotary_dim * e


def _mask_bytes(a: Architecture, batch: int, context: int, e: float, attention: str) -> float:
    """Masks kept alive through the forward pass.

    SDPA without padding needs no mask for causal attention (it passes is_causal=True), nor for a
    sliding window longer than the prompt. Otherwise transformers builds a boolean (batch, 1, N, N)
    mask. The eager path always builds them, as additive float masks, one per layer type.
    """
    n2 = batch * context * context
    kinds = set(a.layer_types)
    if attention == "eager":
        return len(kinds) * n2 * e
    if _sliding_mask(a, context) or a.unused_sliding_mask:
        return n2 * 1.0
    return 0.0


def _sliding_mask(a: Architecture, context: int) -> bool:
    return "sliding" in a.layer_types and context >= (a.sliding_window or 0)


def _norm_transient(T: int, width: int, e: float) -> float:
    """RMSNorm computes in float32: a float32 copy of the input and the normalized float32 result
    (for float32 input the copy is free, but x**2 is not)."""
    return T * width * 8


def _layer_steps(a: Architecture, kind: str, T: int, batch: int, context: int, e: float, attention: str,
                 device: str, dtype: str, int8_outliers: float = 0.0) -> dict[str, dict[str, float]]:
    """Memory on top of the persistent tensors at each step of the last decoder layer."""
    h = a.hidden_size
    x = T * h * e
    q = T * a.num_heads * a.head_dim * e
    out = T * a.num_heads * a.v_head_dim * e
    kv = T * a.num_kv_heads * (a.head_dim + a.v_head_dim) * e
    deq = 0.0
    if dtype in ("nf4", "int4"):  # bitsandbytes de-quantizes each weight for a prefill matmul
        deq = max((t.shape[0] * t.shape[1] for t in weight_tensors(a) if t.kind == "linear" and "mlp" in t.name),
                  default=0) * e
    steps: dict[str, dict[str, float]] = {"input norm": {"float32 copies": _norm_transient(T, h, e)}}

    if a.is_mla:
        latent = T * (a.kv_lora_rank + a.qk_rope_dim) * e
        expanded = T * a.num_heads * (a.qk_nope_dim + a.v_head_dim) * e
        attn = {"normalized input": x, "q": q, "latent and cache entries": 2 * latent, "expanded k, v": expanded,
                "keys with RoPE": q, "query with RoPE": q}
        if device == "cpu":  # CPU SDPA has no kernel for a value width different from the key's
            # (the math path: float scores, then the scores plus the additive causal mask)
            attn["attention scores (SDPA math path)"] = batch * context * context * (8 * a.num_heads + 4)
        else:
            attn["attention output"] = out + x
        steps["attention"] = attn
    else:
        xn = 0.0 if a.norm_after else x  # OLMo 2 feeds the layer input itself (no normalized copy)
        rope = {"normalized input": xn, "q, k, v": q + kv, "RoPE temporaries": 3 * q}
        if a.qk_norm:
            rope["q/k norm float32 copies"] = _norm_transient(T, a.num_heads * a.head_dim, e) - 3 * q + q
        steps["attention: RoPE"] = rope
        scores = {"normalized input": xn, "q, k, v": q + kv}
        gqa = a.num_kv_heads != a.num_heads
        if attention == "eager":
            n2h = batch * a.num_heads * context * context
            # scores in the compute dtype, plus a float32 copy and the float32 softmax; for fp16
            # CUDA's softmax reads fp16 directly, and the peak is its float32 output being cast back
            per = e + (4 + e if (device == "cuda" and dtype == "fp16") else (8 if e < 4 else 4))
            if a.attention_sinks:
                # GPT-OSS: the scores, the scores with the sink column appended, minus their maximum,
                # then softmax in the compute dtype: three N x N tensors at once
                per = 3 * e
            scores["attention scores (eager)"] = n2h * per
            if gqa:
                scores["k, v repeated for GQA"] = T * a.num_heads * (a.head_dim + a.v_head_dim) * e
        elif _sliding_mask(a, context):
            # a sliding-window layer with its mask: q after RoPE, this layer's new cache entry (k
            # and v themselves are freed once cached), Phi-3's fused qkv output (its k and v are
            # views of it), KV heads repeated for GQA (a free view with a single KV head)
            scores = {"normalized input": xn, "q after RoPE": q, "this layer's cache entry": kv}
            if a.fused_projections:
                scores["fused qkv output"] = q + kv
            if gqa and a.num_kv_heads > 1:
                scores["k, v repeated for GQA"] = T * a.num_heads * (a.head_dim + a.v_head_dim) * e
            if device == "cuda":
                # the memory-efficient kernel turns the boolean mask into the query's dtype
                scores["mask in the query dtype (SDPA)"] = batch * context * context * e
            scores["attention output"] = out
        else:
            scores["attention output and o_proj"] = out + x
        steps["attention: scores"] = scores
    steps["post-attention norm"] = {"residual": x, "float32 copies": _norm_transient(T, h, e)}
    mlp = {"residual + normalized input": x if a.norm_after else 2 * x}
    if attention == "eager":  # the layer keeps the softmax output (`_`) until it returns
        mlp["attention weights kept by the layer (eager)"] = batch * a.num_heads * context * context * e
    if kind == "moe":
        S = T * a.experts_per_token  # token-expert pairs
        ei = a.expert_intermediate
        up = S * (h + 4 * ei) * e  # gathered inputs, gate_up output, activation, product
        if a.expert_bias:
            # GPT-OSS: the gathered biases, the output before and after its bias, then a clamped
            # gate and up and the temporaries of its gated activation (alpha * gate, sigmoid, up + 1)
            up = S * (h + 10 * ei) * e
        # gathered inputs, expert outputs, then the outputs weighted by the router and put back in token
        # order: in float32 where the routing weights are float32 (Mixtral, DeepSeek), else in the
        # compute dtype (measured on an H200: Qwen-MoE, OLMoE, Granite)
        w = 4 if a.router_weights_fp32 else e
        down = S * h * (2 * e + 2 * w)
        mlp["experts (grouped_mm)"] = max(up, down)
        mlp["router"] = T * a.num_experts * (e + 4)
        if a.shared_expert_gate:  # Qwen2-MoE runs its shared expert first and keeps its output meanwhile
            mlp["shared expert output"] = x
    elif dtype == "int8":
        # LLM.int8() in up_proj (Phi-3: gate_up_proj): the int8 copy of the input, the int32
        # product, its fp16 de-quantization and the cast back to the compute dtype; for separate
        # projections act(gate) is alive meanwhile
        inter = a.intermediate_size
        if a.fused_projections:
            matmul = T * 2 * inter * (4 + 2 + e) + T * h
            after = 4 * T * inter * e
        else:
            matmul = T * inter * (e + 4 + 2 + e) + T * h
            after = 3 * T * inter * e
        mlp["MLP intermediate (int8 matmul)"] = max(matmul, after)
        if int8_outliers:
            # LLM.int8() multiplies the input columns holding an |x| >= 6 in 16 bits: it gathers
            # those columns of the int8 weight and de-quantizes them through two float32 temporaries
            largest = max((t.shape[0] * t.shape[1] for t in weight_tensors(a) if t.kind == "linear"), default=0)
            mlp["outlier columns de-quantized (LLM.int8())"] = int8_outliers * largest * 9
    else:
        # act(gate), up and their product (Phi-3: the fused gate_up output, act, product)
        n = 4 if a.fused_projections else 3
        plain = n * T * a.intermediate_size * e
        # bitsandbytes 4-bit de-quantizes each weight for a prefill matmul: the up (gate_up)
        # weight is alive next to the tensors made before it, not next to the product
        with_weight = (n - 1) * T * a.intermediate_size * e + deq
        if with_weight > plain:
            mlp["MLP intermediate + de-quantized weight (bitsandbytes 4-bit)"] = with_weight
        else:
            mlp["MLP intermediate (act(gate), up, product)"] = plain
    steps["mlp"] = mlp
    return steps


def _llama_cpp_compute_buffer(a: Architecture, tokens: int, batch: int, device: str) -> float:
    """llama.cpp's compute buffer (approximate: llama.cpp sizes it from its graph): one micro-batch
    of 512 tokens through a layer in float32, the attention scores of that micro-batch against the
    whole context (a few float32 copies; on a GPU flash attention, llama.cpp's default there,
    avoids them), and the logits it keeps. Checked on CPU only (tests/test_vram.py)."""
    ubatch = min(512, tokens) * batch
    width = 4 * a.hidden_size + 3 * max(a.intermediate_size, a.expert_intermediate * a.experts_per_token)
    scores = ubatch * tokens * a.num_heads * 4 * 4 if device == "cpu" else 0
    return ubatch * width * 4 + scores + batch * a.vocab_size * 4 * 2


# ============================================================================ training


def estimate_training(model: Any, method: str = "full", dtype: str = "bf16", optimizer: str = "adamw",
                      lora_rank: int = 16, target_modules: str | tuple[str, ...] | list[str] = "all-linear",
                      seq_len: int = 2048, batch: int = 1, gradient_checkpointing: bool = False,
                      mixed_precision: bool = True, device: str = "cuda", attention: str | None = None) -> MemoryEstimate:
    """Peak memory of a training step (forward, backward, optimizer step) on `batch` x `seq_len` tokens, the
    loss on every position, with the gradients freed after each step (zero_grad(set_to_none=True)).

    - full, dtype bf16/fp16, mixed_precision=True: an fp32 model trained under torch.autocast (what the
      Hugging Face Trainer does with bf16=True): fp32 weights (4 bytes per parameter), fp32 gradients (4) and
      AdamW's two fp32 moments (8): 16 bytes per parameter, plus autocast's 16-bit copy of every matrix
      during the forward and backward passes.
      mixed_precision=False: the model and AdamW's moments in `dtype` (2 + 2 + 4 bytes in bf16).
      dtype fp32: 4 + 4 + 8, no autocast.
    - lora: the base frozen in `dtype`; rank-r adapters on `target_modules` (as peft wraps them, see
      `lora_targets`) in fp32 with their gradients and AdamW states. Runs without autocast, as peft's own
      training loop and labkit.lora.train do.
    - qlora: the base in NF4 (double quantization), adapters as for LoRA.
    Activations are what autograd keeps for backward (labkit.vram_training explains the model);
    gradient_checkpointing keeps each layer's input and re-runs one layer at a time. A model type without a
    formula is traced on the meta device and gets a band (labkit.vram_band), or refuses where it would exceed 10%.
    """
    a = architecture(model)
    if method not in TRAINING_METHODS:
        raise unknown("training method", method, TRAINING_METHODS)
    if optimizer not in OPTIMIZERS:
        raise unknown("optimizer", optimizer, OPTIMIZERS)
    if device not in ("cuda", "cpu"):
        raise unknown("device", device, ("cuda", "cpu"))
    if attention is not None and attention not in ("sdpa", "eager"):
        raise unknown("attention implementation", attention, ("sdpa", "eager"))
    dtype = normalize_dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise LabkitError(f"training dtype must be fp32, fp16 or bf16 (got {dtype!r}); for a 4-bit base use method='qlora'.")
    _require_int("seq_len", seq_len)
    _require_int("batch", batch)
    _require_int("lora_rank", lora_rank)
    try:
        nf4 = weight_bytes(a, "nf4", double_quant=True, compute_dtype=dtype) if method == "qlora" else {}
        m = vram_training.step_memory(a, method, dtype, optimizer, lora_rank, target_modules, seq_len, batch,
                                      gradient_checkpointing, mixed_precision, device, attention, sum(nf4.values()))
    except vram_trace.DataDependent as err:
        band_for("experts routed in a loop (not traceable)", f"{err}: it cannot be traced")
        raise
    band, band_source = 0.0, ""
    if a.generic:
        band, band_source = band_for(m.kind, f"{a.model_type} has no formula, and mixed precision (autocast) "
                                             "cannot be traced on the meta device; estimate_training(..., "
                                             "mixed_precision=False) traces the model trained in bf16 itself")
    notes = list(m.notes)
    beyond = beyond_window(a, seq_len)
    if beyond:
        notes.insert(1, window_warning(a, seq_len))
    overhead = CUDA_CONTEXT_BYTES + CUBLAS_WORKSPACE_BYTES if device == "cuda" else CPU_OVERHEAD_BYTES
    return MemoryEstimate(
        weights=m.weights, kv_cache=0.0, activations=m.activations, overhead=overhead, gradients=m.gradients,
        optimizer_states=m.optimizer_states, label=f"{a.name} {method} {dtype} {optimizer}", details=m.details,
        notes=notes, band=band, band_source=band_source,
        inputs=dict(model=a.name, method=method, dtype=dtype, optimizer=optimizer, lora_rank=lora_rank,
                    seq_len=seq_len, batch=batch, gradient_checkpointing=gradient_checkpointing,
                    mixed_precision=m.autocast, trainable_parameters=m.trainable, device=device,
                    max_context=a.max_position, beyond_max_context=beyond, architecture=a),
    )


def lora_targets(model: Any, rank: int = 16, target_modules: str | tuple[str, ...] | list[str] = "all-linear"):
    """The weights peft's LoRA adapts for `target_modules` ("all-linear": every nn.Linear but the output head; for
    the mixture-of-experts types peft converts, the experts' stacked weights and the router), and the trainable
    parameters: r x (in + out) per adapted matrix (labkit.vram_training.LoraTargets)."""
    return vram_training.lora_targets(model, rank, target_modules)


# ============================================================================ several GPUs, and fitting


def split_tensor_parallel(estimate: MemoryEstimate, n_gpus: int) -> MemoryEstimate:
    """What each of `n_gpus` GPUs holds when the model is split by tensor parallelism (Megatron style).

    Weight matrices, the vocabulary and the attention heads are divided; KV heads too, but each
    GPU keeps at least one (with fewer KV heads than GPUs they are replicated). The residual stream
    (hidden states) is replicated; every GPU pays its own CUDA context plus NCCL's buffers.
    """
    _require_int("n_gpus", n_gpus)
    if n_gpus == 1:
        return estimate
    model = estimate.inputs.get("architecture") or estimate.inputs.get("model")
    a = architecture(model) if model else None
    kv_share = 1 / n_gpus
    if a is not None and not a.is_mla and a.num_kv_heads < n_gpus:
        kv_share = 1 / a.num_kv_heads
    if a is not None and a.is_mla:
        kv_share = 1.0  # the compressed latent is shared by all heads: every GPU keeps it
    replicated = sum(v for k, v in estimate.details.items() if "hidden states" in k or "residual" in k or "RoPE" in k)
    split_act = max(0.0, estimate.activations - replicated)
    nccl = 256 * MIB if estimate.inputs.get("device", "cuda") == "cuda" else 0.0
    per = replace(
        estimate,
        weights=estimate.weights / n_gpus,
        kv_cache=estimate.kv_cache * kv_share,
        gradients=estimate.gradients / n_gpus,
        optimizer_states=estimate.optimizer_states / n_gpus,
        activations=replicated + split_act / n_gpus,
        overhead=estimate.overhead + nccl,
        label=f"{estimate.label} per GPU (tensor parallel x{n_gpus})",
        details={**estimate.details, "overhead: NCCL buffers": nccl},
        notes=[*estimate.notes, f"each of {n_gpus} GPUs holds this; all together {n_gpus}x"],
        inputs={**estimate.inputs, "n_gpus": n_gpus},
    )
    return per


@dataclass(frozen=True)
class Fit:
    """Does an estimate fit a memory budget? Truthy when it does."""

    fits: bool
    needed: float
    available: float
    where: str

    def __bool__(self) -> bool:
        return self.fits

    @property
    def headroom(self) -> float:
        return self.available - self.needed

    def __str__(self) -> str:
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"{verdict} on {self.where}: needs {self.needed / GIB:.1f} GiB of {self.available / GIB:.1f} GiB "
                f"({self.headroom / GIB:+.1f} GiB headroom)")


def fits(estimate: MemoryEstimate, device_or_gb: Any = None) -> Fit:
    """Whether `estimate` fits the usable memory of `device_or_gb`: a GPU name from datasets/gpus.json
    ("T4", "4090", "A100 80GB"), a number of GiB as the device shows them, or None / "this" for this
    machine's free memory. Usable = what the card shows to CUDA (a T4 sold as 16 GB shows 14.6 GiB)
    less a 5% safety margin: `labkit.hardware.usable_memory` is the one rule."""
    usable = usable_memory(device_or_gb)
    where = usable.where if usable.where.startswith("this") else f"{usable.where} (usable)"
    return Fit(estimate.total <= usable.bytes, estimate.total, usable.bytes, where)


def gpus_needed(estimate_for_n, device_or_gb: Any, max_gpus: int = 16) -> int | None:
    """The fewest GPUs (tensor parallel) for which `estimate_for_n(n)` fits `device_or_gb`; None if
    even `max_gpus` do not suffice. `estimate_for_n` may also be an estimate (split by n here)."""
    for n in range(1, max_gpus + 1):
        est = estimate_for_n(n) if callable(estimate_for_n) else split_tensor_parallel(estimate_for_n, n)
        if fits(est, device_or_gb):
            return n
    return None



# ============================================================================ tables for the notebook


def dtype_table(model: Any, dtypes: tuple[str, ...] = ("fp32", "bf16", "int8", "nf4", "Q8_0", "Q6_K", "Q5_K_M",
                                                          "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")) -> list[dict]:
    """Weights of `model` in each dtype: effective bits per parameter (scales included) and GiB."""
    params = parameter_count(model)
    rows = []
    for d in dtypes:
        w = weight_bytes(model, d)
        total = sum(w.values())
        rows.append({"dtype": d, "bits/param": round(total * 8 / params, 2), "weights GiB": round(total / GIB, 2),
                     "kept in 16 bits GiB": round(w["unquantized"] / GIB, 2) if d in BNB_DTYPES else 0.0})
    return rows


def kv_table(models: list[str], tokens: int = 32768, kv_dtype: str = "bf16") -> list[dict]:
    """KV cache per token and at `tokens` tokens, next to the bf16 weights, for several models.
    A model whose window is shorter than `tokens` is flagged in the "window" column: its cache is
    computed anyway, but the model cannot use that many tokens."""
    rows = []
    for m in models:
        a = architecture(m)
        per = sum(kv_cache_bytes_per_token(a, kv_dtype).values())
        kv = kv_cache_bytes(a, tokens, 1, kv_dtype)
        w = sum(weight_bytes(a, "bf16").values())
        rows.append({"model": m, "attention": a.kv_grouping, "sliding layers": a.layer_types.count("sliding"),
                     "window": window_label(a, tokens),
                     "KiB/token": round(per / 1024, 1), f"KV GiB @{tokens // 1024}k": round(kv / GIB, 2),
                     "weights GiB (bf16)": round(w / GIB, 2), "KV/weights": round(kv / w, 2)})
    return rows


def beyond_window(model: Any, tokens: int) -> bool:
    """True when `tokens` is more than the model's context window (max_position_embeddings)."""
    a = architecture(model)
    return bool(a.max_position) and tokens > a.max_position


def window_label(model: Any, tokens: int) -> str:
    """The model's context window, with "⚠ beyond" when `tokens` exceeds it (for tables)."""
    a = architecture(model)
    if not a.max_position:
        return "?"
    size = f"{a.max_position // 1024}k" if a.max_position % 1024 == 0 else f"{a.max_position:,}"
    return f"{size} ⚠ beyond" if beyond_window(a, tokens) else size


def kv_equals_weights_tokens(model: Any, dtype: str = "bf16", kv_dtype: str | None = None) -> int:
    """The context length at which the KV cache (one sequence) is as large as the weights."""
    a = architecture(model)
    kv_dtype = kv_dtype or (dtype if normalize_dtype(dtype) in FLOAT_DTYPES else "bf16")
    weights = sum(weight_bytes(a, dtype).values())
    per = kv_cache_bytes_per_token(a, kv_dtype)
    if not per["sliding"]:
        return math.ceil(weights / per["full"])
    tokens = 1  # sliding layers stop growing at the window: search
    while kv_cache_bytes(a, tokens, 1, kv_dtype) < weights:
        tokens *= 2
        if tokens > 1 << 30:
            return tokens
    lo, hi = tokens // 2, tokens
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if kv_cache_bytes(a, mid, 1, kv_dtype) < weights else (lo, mid)
    return hi


COMMON_GPUS = ("NVIDIA T4", "NVIDIA RTX 3060", "NVIDIA RTX 4090", "NVIDIA A100 40GB", "NVIDIA A100 80GB",
               "NVIDIA H100 80GB")


def hardware_table(models: list[str], dtypes: tuple[str, ...] = ("bf16", "int8", "Q4_K_M"), context: int = 4096,
                   gpus: tuple[str, ...] = COMMON_GPUS) -> list[dict]:
    """For each model and dtype: the estimate, the smallest common GPU it fits, and how many 80 GB GPUs
    tensor parallelism needs."""
    sizes = sorted((usable_memory(g).bytes, find_gpu(g)["name"]) for g in gpus)
    rows = []
    for m in models:
        for d in dtypes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est = estimate_inference(m, d, context=context)
            smallest = next((name for _, name in sizes if fits(est, name)), None)
            n80 = gpus_needed(est, 80)
            rows.append({"model": m, "window": window_label(m, context), "dtype": d,
                         f"GiB @{context}": round(est.total / GIB, 1),
                         "smallest GPU": smallest or "none (split it)", "80 GB GPUs": n80 or "-"})
    return rows


def largest_that_fits(models: list[str], dtype: str, context: int, margin: float = 0.9) -> str | None:
    """The largest of `models` whose estimate fits `margin` of this machine's free memory."""
    hw = detect_hardware(check_online=False)
    free = (hw.vram_free_bytes if hw.device == "cuda" else hw.ram_available_bytes) or 0
    device = "cuda" if hw.device == "cuda" else "cpu"
    fitting = []
    for m in models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = estimate_inference(m, dtype, context=context, device=device)
        if est.total <= margin * free:
            fitting.append((est.total, m))
    return max(fitting)[1] if fitting else None


# ============================================================================ exercises


@exercise("03.weights_gib", hint="parameters x bytes per parameter (bf16: 2 bytes, int8: 1, nf4: 0.5), divided "
          "by 2**30 for GiB.", rtol=0.01, slips={**GB_FOR_GIB, **BITS_FOR_BYTES})
def _expected_weights_gib(parameters: float, dtype: str) -> float:
    return parameters * bytes_per_weight(dtype) / GIB


@exercise("03.kv_cache_gib", hint="2 (K and V) x layers x kv_heads x head_dim x tokens x bytes per value, divided "
          "by 2**30. Use the KV heads, not the query heads.", rtol=0.01,
          slips={"counting only K or only V (the cache stores both, x 2)": 0.5, **GB_FOR_GIB,
                 "counting bits where bytes are asked (16 for bf16 instead of 2)": 8.0})
def _expected_kv_gib(layers: int, kv_heads: int, head_dim: int, tokens: int, bytes_per_value: float) -> float:
    return kv_cache_formula_bytes(layers, kv_heads, head_dim, tokens, bytes_per_value) / GIB


@exercise("03.kv_equals_weights_tokens", hint="weights in bytes / KV bytes per token (all layers, K and V). "
          "labkit.vram.kv_cache_bytes_per_token(model) gives the per-token figure.", rtol=0.01,
          slips={"leaving out the x 2 for K and V in the bytes per token": 2.0, **BITS_FOR_BYTES})
def _expected_kv_equals_weights(model: str, dtype: str = "bf16") -> int:
    return kv_equals_weights_tokens(model, dtype)


@exercise("03.full_finetune_gib", hint="mixed-precision AdamW keeps, per parameter: bf16 weights (2 bytes), bf16 "
          "gradients (2), an fp32 master copy (4) and Adam's two fp32 moments (8): 16 bytes.", rtol=0.01,
          slips={"counting only weights and gradients (4 bytes per parameter)": 4 / 16,
                 "leaving out Adam's two fp32 moments (8 bytes per parameter)": 8 / 16,
                 "leaving out the fp32 master copy (4 bytes per parameter)": 12 / 16, **GB_FOR_GIB})
def _expected_full_finetune_gib(parameters: float) -> float:
    return parameters * 16 / GIB


@validator("03.min_gpus", hint="try n = 1, 2, 3 ...: split_tensor_parallel(estimate, n) gives what each GPU holds; "
           "fits(per_gpu, gb) says whether it fits (labkit.vram.gpus_needed does the loop).")
def _validate_min_gpus(answer: Any, model: str, dtype: str, context: int, gb: float) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = estimate_inference(model, dtype, context=context)
    need = gpus_needed(est, gb)
    if isinstance(answer, bool) or not isinstance(answer, numbers.Integral) or answer < 1:
        return f"give a whole number of GPUs (1 or more), got {answer!r}"
    if answer < need:
        return f"with {answer} GPU(s) the model {fits(split_tensor_parallel(est, int(answer)), gb)}"
    if answer > need:
        return f"{answer} GPUs of {gb} GB hold {model}, but fewer do too"
    return None
