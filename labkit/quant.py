"""Quantization: fewer bits per weight, measured on one real model and one text.

A quantizer stores each weight as a small integer code plus a few floats (scales, zero points) that
map the codes back to real numbers. The course's path through it, top to bottom:

1. By hand (numpy): absmax int8 (one scale per tensor), zero-point int8 (a scale and an offset),
   group-wise int4 (one scale per group of `group_size` weights) and NF4 (16 levels placed at the
   quantiles of a normal distribution, QLoRA's 4-bit type). Each returns a `Quantized` that knows its
   codes, its scales, its bits per weight and how to de-quantize; `error_metrics` scores it.
2. bitsandbytes: LLM.int8() and NF4 (with and without double quantization) loads of the bundled
   model in transformers, with the weights' bytes measured next to `labkit.vram.weight_bytes`.
3. A GGUF quant ladder of the bundled model: de-quantize its Q4_K_M file to F16 (labkit.gguf_files),
   then let llama.cpp's own quantizer make Q8_0 ... Q2_K. Files live in labkit's cache, built once.
4. Quality, the way llama.cpp's `perplexity --kl-divergence` reports it: perplexity on a fixed text,
   and against the highest-precision reference, the mean KL divergence of the next-token distributions
   and how often both pick the same top token. `score` takes a GGUF file or a transformers model and
   gives the same number for the same weights (same token ids, same windows).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import vram
from .bench import benchmark
from .check import exercise, validator
from .dtypes import BITS_PER_WEIGHT, torch_dtype
from .errors import LabkitError, MissingPackageError, require_positive, unknown
from .formatting import GIB
from .gguf_files import iter_dequantized, read_gguf, require_disk_space, write_gguf_like
from .hardware import cpu_threads
from .models import (
    BUNDLED,
    BUNDLED_LICENCE,
    LoadedModel,
    ModelReport,
    bundled_gguf_path,
    dense_cache_path,
    llama_cpp_logs,
    load_bundled_transformers,
    load_llama_cpp,
    require_llama_cpp,
    validate_gguf,
)
from .paths import cache_dir, datasets_dir
from .runtimes import generate_llama_cpp

# torch, transformers, bitsandbytes, llama_cpp, matplotlib and tqdm are imported inside the functions that
# use them: `import labkit` stays quick and works without the optional extras.

# ============================================================================ 1. by hand


@dataclass
class Quantized:
    """A tensor stored as integer codes plus the floats that map them back."""

    scheme: str
    codes: np.ndarray  # integers, one per weight (not packed: `bits` says how many bits each needs)
    scale: np.ndarray  # one per tensor, or one per group
    zero: np.ndarray | None  # zero points (zero-point scheme), else None
    shape: tuple[int, ...]
    bits: int
    group_size: int | None = None  # None: one scale for the whole tensor
    levels: np.ndarray | None = None  # NF4: the 16 values a code stands for
    scale_bits: int = 32  # bits each stored scale (and zero point) takes

    def dequantize(self) -> np.ndarray:
        codes = self.codes.astype(np.float32)
        if self.levels is not None:
            codes = self.levels[self.codes]
        if self.zero is not None:
            codes = codes - self.zero
        return (codes * self.scale).reshape(self.shape).astype(np.float32)

    @property
    def bits_per_weight(self) -> float:
        """Code bits plus the scales' (and zero points') share of bits, per weight."""
        n = math.prod(self.shape)
        extra = self.scale.size * self.scale_bits + (self.zero.size * self.scale_bits if self.zero is not None else 0)
        return self.bits + extra / n


def _as_float_array(w: Any, name: str = "w") -> np.ndarray:
    try:
        import torch

        if isinstance(w, torch.Tensor):
            w = w.detach().float().cpu().numpy()
    except ImportError:
        pass
    arr = np.asarray(w, dtype=np.float32) if not isinstance(w, np.ndarray) else w.astype(np.float32, copy=False)
    if arr.size == 0 or not np.isfinite(arr).all():
        raise LabkitError(f"{name} must be a non-empty array of finite numbers")
    return arr


def _require_bits(bits: int, allowed: Sequence[int] = (2, 3, 4, 5, 6, 8)) -> None:
    if isinstance(bits, bool) or bits not in allowed:
        raise unknown("number of bits", bits, allowed)


def _groups(w: np.ndarray, group_size: int) -> np.ndarray:
    """`w` as rows of `group_size` consecutive weights (along the last dimension, as GGUF and bnb group)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise LabkitError(f"group_size must be a positive integer (32, 64, 128 are usual), got {group_size!r}")
    if w.size % group_size:
        raise LabkitError(f"group_size {group_size} does not divide the {w.size} weights; pick a divisor of the "
                          f"last dimension ({w.shape[-1]}), e.g. 32, 64 or 128")
    return w.reshape(-1, group_size)


def absmax_quantize(w: Any, bits: int = 8) -> Quantized:
    """Symmetric: scale = max|w| / (2^(bits-1) - 1), code = round(w / scale). One scale for the tensor."""
    _require_bits(bits)
    w = _as_float_array(w)
    qmax = 2 ** (bits - 1) - 1
    scale = np.array(np.abs(w).max() / qmax if np.abs(w).max() > 0 else 1.0, dtype=np.float32)
    codes = np.clip(np.round(w / scale), -qmax, qmax).astype(np.int8 if bits <= 8 else np.int16)
    return Quantized("absmax", codes, scale, None, w.shape, bits)


def zeropoint_quantize(w: Any, bits: int = 8) -> Quantized:
    """Asymmetric: the range [min, max] maps onto all 2^bits codes; `zero` is the code of 0.0.

    scale = (max - min) / (2^bits - 1), zero = round(-min / scale), code = clip(round(w / scale) + zero).
    """
    _require_bits(bits)
    w = _as_float_array(w)
    qmax = 2**bits - 1
    lo, hi = float(w.min()), float(w.max())
    scale = np.array((hi - lo) / qmax if hi > lo else 1.0, dtype=np.float32)
    zero = np.array(np.round(-lo / scale), dtype=np.float32)
    codes = np.clip(np.round(w / scale) + zero, 0, qmax).astype(np.uint8 if bits <= 8 else np.uint16)
    return Quantized("zero-point", codes, scale, zero, w.shape, bits)


def groupwise_quantize(w: Any, bits: int = 4, group_size: int = 64) -> Quantized:
    """Absmax per group of `group_size` consecutive weights: an outlier only spoils its own group."""
    _require_bits(bits)
    w = _as_float_array(w)
    g = _groups(w, group_size)
    qmax = 2 ** (bits - 1) - 1
    absmax = np.abs(g).max(axis=1, keepdims=True)
    scale = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)
    codes = np.clip(np.round(g / scale), -qmax, qmax).astype(np.int8)
    return Quantized("group-wise", codes, scale, None, w.shape, bits, group_size=group_size)


def nf4_levels() -> np.ndarray:
    """The 16 NF4 values (QLoRA, Dettmers et al. 2023): quantiles of a standard normal, scaled to [-1, 1],
    with an exact zero. 8 positive levels from the quantiles of (0.5, 0.9677], 7 negative ones."""
    from statistics import NormalDist

    offset = 0.9677083  # the quantile bitsandbytes uses for the outermost level ((1 - 1/(2*15) + 1 - 1/(2*16)) / 2)
    inv = NormalDist().inv_cdf
    pos = [inv(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    neg = [-inv(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    values = np.array(sorted(pos + [0.0] + neg), dtype=np.float64)
    return (values / np.abs(values).max()).astype(np.float32)


def nf4_quantize(w: Any, block_size: int = 64) -> Quantized:
    """NF4: scale each block of `block_size` weights by its absmax, then store the nearest of 16 NF4 levels."""
    w = _as_float_array(w)
    g = _groups(w, block_size)
    levels = nf4_levels()
    absmax = np.abs(g).max(axis=1, keepdims=True)
    scale = np.where(absmax > 0, absmax, 1.0).astype(np.float32)
    normed = g / scale
    midpoints = (levels[1:] + levels[:-1]) / 2
    codes = np.searchsorted(midpoints, normed).astype(np.uint8)
    return Quantized("nf4", codes, scale, None, w.shape, 4, group_size=block_size, levels=levels)


SCHEMES: dict[str, Callable[..., Quantized]] = {
    "absmax": absmax_quantize,
    "zero-point": zeropoint_quantize,
    "group-wise": groupwise_quantize,
    "nf4": nf4_quantize,
}


def quantize(w: Any, scheme: str, **kwargs: Any) -> Quantized:
    """One front door: quantize(w, "absmax" | "zero-point" | "group-wise" | "nf4", bits=..., group_size=...)."""
    if scheme not in SCHEMES:
        raise unknown("quantization scheme", scheme, SCHEMES)
    return SCHEMES[scheme](w, **kwargs)


def error_metrics(w: Any, w_hat: Any) -> dict[str, float]:
    """How far a de-quantized tensor is from the original: MSE, largest error, and SNR in dB
    (10 log10 of signal power over error power: every 6 dB is one more bit of precision)."""
    w, w_hat = _as_float_array(w), _as_float_array(w_hat, "w_hat")
    if w.shape != w_hat.shape:
        raise LabkitError(f"w and w_hat must have the same shape, got {w.shape} and {w_hat.shape}")
    err = (w.astype(np.float64) - w_hat)
    mse = float(np.mean(err**2))
    signal = float(np.mean(w.astype(np.float64) ** 2))
    snr = float("inf") if mse == 0 else 10 * math.log10(signal / mse) if signal > 0 else float("-inf")
    return {"mse": mse, "max_error": float(np.abs(err).max()), "snr_db": snr}


def compare_schemes(w: Any, schemes: Sequence[tuple[str, dict]] | None = None) -> list[dict]:
    """Quantize `w` with several schemes; one row each: bits per weight, MSE, max error, SNR."""
    schemes = schemes or [("absmax", {"bits": 8}), ("zero-point", {"bits": 8}), ("absmax", {"bits": 4}),
                          ("group-wise", {"bits": 4, "group_size": 64}), ("nf4", {"block_size": 64})]
    rows = []
    for name, kwargs in schemes:
        q = quantize(w, name, **kwargs)
        label = f"{name} {q.bits}-bit" + (f" (groups of {q.group_size})" if q.group_size else "")
        rows.append({"scheme": label, "bits/weight": round(q.bits_per_weight, 3), **error_metrics(w, q.dequantize())})
    return rows


def with_outlier(w: Any, factor: float = 20.0, index: int = 0) -> np.ndarray:
    """A copy of `w` whose weight at flat `index` is `factor` times the largest |w| (one outlier).
    LLM.int8() found such outlier *features* (activations up to ~20x larger) in every model above ~6.7B."""
    require_positive("factor", factor)
    w = _as_float_array(w).copy()
    flat = w.reshape(-1)
    flat[index] = factor * float(np.abs(flat).max())
    return w


def outlier_effect(w: Any, factor: float = 20.0, bits: int = 8, group_size: int = 64) -> list[dict]:
    """Absmax (one scale) vs group-wise (a scale per group), without and with a single outlier."""
    w = _as_float_array(w)
    bad = with_outlier(w, factor)
    rows = []
    for label, tensor in (("original", w), (f"one outlier ({factor:g}x max)", bad)):
        for q in (absmax_quantize(tensor, bits), groupwise_quantize(tensor, bits, group_size)):
            m = error_metrics(tensor, q.dequantize())
            # the outlier itself is kept well by both; what matters is every other weight
            mask = np.ones(tensor.size, bool)
            mask[0] = False
            rest = error_metrics(tensor.reshape(-1)[mask], q.dequantize().reshape(-1)[mask])
            zeroed = float(np.mean(q.codes.reshape(-1)[mask] == 0))
            rows.append({"weights": label, "scheme": f"{q.scheme} int{bits}", "snr_db": m["snr_db"],
                         "snr_db_other_weights": rest["snr_db"], "share_rounded_to_zero": zeroed})
    return rows


def nf4_bits_per_param(block_size: int = 64, double_quant: bool = False, nested_block: int = 256,
                       absmax_bits: int = 32, nested_absmax_bits: int = 8) -> float:
    """Bits per weight of bitsandbytes NF4: 4 + absmax bits / block (+ the nested scales with double quant).

    Without double quant: 4 + 32/64 = 4.5. With it (QLoRA): 4 + 8/64 + 32/(64*256) = 4.127.
    """
    require_positive("block_size", block_size)
    require_positive("nested_block", nested_block)
    if not double_quant:
        return 4 + absmax_bits / block_size
    return 4 + nested_absmax_bits / block_size + absmax_bits / (block_size * nested_block)


# ============================================================================ 2. bitsandbytes

BNB_FORMATS = ("int8", "nf4", "nf4-no-double-quant")


def _require_bnb():
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise MissingPackageError("bitsandbytes", "bitsandbytes int8 / NF4", extra="lab") from err
    return bnb


def bnb_available() -> tuple[bool, str]:
    """(True, version) when bitsandbytes imports and quantizes a small matrix here, else (False, why)."""
    try:
        bnb = _require_bnb()
        import torch

        w = torch.randn(64, 64)
        packed, state = bnb.functional.quantize_4bit(w, quant_type="nf4")
        back = bnb.functional.dequantize_4bit(packed, state)
        if not torch.allclose(back, w, atol=0.5):
            return False, "bitsandbytes NF4 round trip gave wrong values"
        return True, bnb.__version__
    except (ImportError, RuntimeError, NotImplementedError, AttributeError) as err:
        return False, f"{type(err).__name__}: {err}"


def bnb_config(fmt: str, compute_dtype: str = "fp32"):
    """A transformers BitsAndBytesConfig for "int8" (LLM.int8()), "nf4" (double quant, QLoRA's
    default) or "nf4-no-double-quant"."""
    from transformers import BitsAndBytesConfig

    if fmt not in BNB_FORMATS:
        raise unknown("bitsandbytes format", fmt, BNB_FORMATS)
    if fmt == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=fmt == "nf4",
                              bnb_4bit_compute_dtype=torch_dtype(compute_dtype))


def quantized_weight_bytes(model: Any) -> dict[str, float]:
    """Measured bytes of a (bitsandbytes-)quantized model's weights, split like `vram.weight_bytes`:
    quantized codes, unquantized tensors, and scales (4-bit absmax and nested absmax; int8 row scales)."""
    out = {"quantized": 0.0, "unquantized": 0.0, "scales": 0.0}
    seen: set[int] = set()
    for p in [*model.parameters(), *model.buffers()]:
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        nbytes = float(p.numel() * p.element_size())
        state = getattr(p, "quant_state", None)
        scb = getattr(p, "SCB", None)
        if state is not None:
            out["quantized"] += nbytes
            out["scales"] += float(state.absmax.numel() * state.absmax.element_size())
            if getattr(state, "state2", None) is not None:
                s2 = state.state2
                out["scales"] += float(s2.absmax.numel() * s2.absmax.element_size())
        elif p.dtype == _int8():
            out["quantized"] += nbytes
            if scb is not None:
                out["scales"] += float(scb.numel() * scb.element_size())
        else:
            out["unquantized"] += nbytes
    return out


def _int8():
    import torch

    return torch.int8


def load_bnb(fmt: str, device: str = "cpu", compute_dtype: str | None = None):
    """The bundled Gemma 3 270M loaded through bitsandbytes in `fmt` (see BNB_FORMATS) on `device`.

    Returns (LoadedModel, {"measured": bytes by part, "estimated": vram.weight_bytes by part}).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if fmt not in BNB_FORMATS:
        raise unknown("bitsandbytes format", fmt, BNB_FORMATS)
    _require_bnb()
    compute_dtype = compute_dtype or ("fp32" if device == "cpu" else "bf16")
    dense = dense_cache_path()
    if not (dense / "model.safetensors").exists():
        load_bundled_transformers()  # converts the GGUF once
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(dense), quantization_config=bnb_config(fmt, compute_dtype),
                                                 dtype=torch_dtype(compute_dtype), device_map={"": device}).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(dense))
    measured = quantized_weight_bytes(model)
    est = vram.weight_bytes(BUNDLED, "int8" if fmt == "int8" else "nf4", double_quant=fmt == "nf4",
                            compute_dtype=compute_dtype)
    report = ModelReport(name=BUNDLED, source="bundled-dense", runtime=f"transformers + bitsandbytes {fmt}",
                         parameters=sum(p.numel() for p in model.parameters()), dtype=fmt,
                         bytes=int(sum(measured.values())), licence=BUNDLED_LICENCE, random_weights=False,
                         location=str(dense), load_seconds=time.perf_counter() - start, device=device)
    return LoadedModel(model, tokenizer, report), {"measured": measured, "estimated": est}


def time_linear(formats: Sequence[str] = ("bf16", "int8", "nf4"), batches: Sequence[int] = (1, 16, 256, 4096),
                in_features: int = 4096, out_features: int = 14336, device: str = "cuda", reps: int = 20) -> list[dict]:
    """Time one linear layer (default: Llama 3.1 8B's MLP up-projection) per format on x of shape (batch, in).

    bf16 is torch's matmul; int8 is bitsandbytes' Linear8bitLt (LLM.int8(), outlier threshold 6); nf4 its
    Linear4bit. Each row: ms per product (median of 3 bursts of `reps`), TFLOP/s, and the weight bytes read per
    second. At batch 1 the product is memory-bound (fewer bytes can win); at large batches it is compute-bound
    and a quantized layer pays extra work for de-quantizing or rescaling.
    """
    import torch

    for fmt in formats:
        if fmt not in ("bf16", "int8", "nf4"):
            raise unknown("format", fmt, ("bf16", "int8", "nf4"))
    dtype = torch.bfloat16
    dense = torch.nn.Linear(in_features, out_features, bias=False, dtype=dtype)
    torch.nn.init.normal_(dense.weight, std=0.02)
    layers = {}
    for fmt in formats:
        if fmt == "bf16":
            layers[fmt] = dense.to(device)
            continue
        bnb = _require_bnb()
        w = dense.weight.data.detach().cpu().clone()
        if fmt == "int8":
            layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=False, has_fp16_weights=False, threshold=6.0)
            layer.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=dtype, quant_type="nf4")
            layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4")
        layers[fmt] = layer.to(device)
    weight_bytes = {"bf16": 2.0, "int8": 1.0 + 4 / in_features, "nf4": nf4_bits_per_param(64, True) / 8}

    def sync() -> None:
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    rows = []
    for batch in batches:
        x = torch.randn(batch, in_features, dtype=dtype, device=device)
        for fmt, layer in layers.items():
            times = []
            # LLM.int8() casts bf16 inputs to fp16 (part of its cost here) and warns on every call: thousands of
            # lines in the notebook otherwise (seen on the H200 run of 04)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
                for _ in range(3):
                    layer(x)
                for _ in range(3):
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        layer(x)
                    sync()
                    times.append((time.perf_counter() - t0) / reps)
            t = sorted(times)[1]
            rows.append({"format": fmt, "batch": batch, "ms": t * 1e3,
                         "tflops": 2 * batch * in_features * out_features / t / 1e12,
                         "weight_gb_per_s": weight_bytes[fmt] * in_features * out_features / t / 1e9})
    return rows


def memory_table(results: dict[str, dict]) -> list[dict]:
    """Rows of measured vs estimated weight bytes (MiB) per format, from {format: load_bnb(...)[1]}."""
    rows = []
    for fmt, r in results.items():
        m, e = sum(r["measured"].values()), sum(r["estimated"].values())
        rows.append({"format": fmt, "measured MiB": m / 2**20, "estimated MiB": e / 2**20,
                     "error of the estimate": (e - m) / m, "kept unquantized MiB": r["measured"]["unquantized"] / 2**20})
    return rows


# ============================================================================ 3. the GGUF ladder

LADDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
REFERENCE = "F16"


def llama_cpp_quant_types() -> list[str]:
    """The quantization types llama.cpp's quantizer knows (the LLAMA_FTYPE_MOSTLY_* names)."""
    import llama_cpp

    names = [n.removeprefix("LLAMA_FTYPE_MOSTLY_") for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_")]
    return sorted(n for n in names if not n.startswith(("IQ1", "IQ2", "IQ3_XXS")))  # those need an imatrix


def _require_llama_cpp():
    return require_llama_cpp("Quantizing with llama.cpp")


def quantize_gguf(source: str | Path, qtype: str, out_path: str | Path, threads: int | None = None) -> Path:
    """Quantize a GGUF file with llama.cpp's own quantizer (what `llama-quantize src out Q4_K_M` runs).

    Written to a temporary name and renamed when complete: a failed or interrupted run leaves nothing.
    """
    llama_cpp = _require_llama_cpp()
    source = validate_gguf(source)
    known = llama_cpp_quant_types()
    if qtype not in known:
        raise unknown("llama.cpp quantization type", qtype, known)
    out_path = Path(out_path)
    bits = _ladder_bits(qtype)
    require_disk_space(out_path.parent, read_gguf(source).n_parameters * bits / 8, f"quantizing to {qtype}")
    tmp = out_path.with_name(f".{out_path.name}.partial-{os.getpid()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.nthread = threads or cpu_threads()
    try:
        # llama.cpp logs a line per tensor: keep it out of the notebook, but read it (fallbacks, errors). It
        # arrives through labkit's log callback (Python's sys.stderr) or, from C, on file descriptor 2.
        python_side = io.StringIO()
        with _captured_stderr() as log, contextlib.redirect_stderr(python_side), llama_cpp_logs(True):
            rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        log.text += python_side.getvalue()
        if rc != 0:
            raise LabkitError(f"llama.cpp could not quantize {source.name} to {qtype} (return code {rc}):\n"
                              f"{log.text[-1500:]}")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    fallbacks = log.text.count("falling back")
    if fallbacks:
        print(f"{qtype}: llama.cpp used a fallback type for {fallbacks} tensors (their rows are not a multiple of "
              "256, the k-quants' super-block)")
    return out_path


class _captured_stderr:
    """Redirect the process's stderr (file descriptor 2, where C libraries write) to a temporary file."""

    def __enter__(self):
        import sys
        import tempfile

        sys.stderr.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        self.text = ""
        return self

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", errors="replace")
        self._file.close()
        return False


def _ladder_bits(qtype: str) -> float:
    return BITS_PER_WEIGHT.get(qtype, 16.0 if qtype in ("F16", "BF16") else 8.5)


def ladder_dir() -> Path:
    return cache_dir() / "quant-ladder"


def reference_gguf(source: str | Path | None = None, dtype: str = REFERENCE) -> Path:
    """The bundled model (or `source`) de-quantized to a full-precision GGUF (F16 by default), cached."""
    source = Path(source) if source is not None else bundled_gguf_path()
    stem = BUNDLED if source == bundled_gguf_path() else source.stem
    out = ladder_dir() / f"{stem}-{dtype}.gguf"
    if out.exists():
        return out
    print(f"De-quantizing {source.name} to {dtype} (once; cached as {out}) ...", flush=True)
    half = np.float16 if dtype == "F16" else np.float32
    tensors = {name: (a.astype(half) if a.ndim > 1 else a) for name, a in iter_dequantized(source)}
    return write_gguf_like(source, tensors, out, dtype=dtype)


def build_ladder(levels: Sequence[str] = LADDER, source: str | Path | None = None,
                 threads: int | None = None) -> dict[str, Path]:
    """{level: GGUF path} for the reference (F16) and every level, quantized by llama.cpp from it.

    Files already in the cache are reused; only missing ones are made (a progress bar shows them).
    """
    from tqdm.auto import tqdm

    _require_llama_cpp()
    known = llama_cpp_quant_types()
    for level in levels:
        if level not in known:
            raise unknown("llama.cpp quantization type", level, known)
    folder = ladder_dir()
    folder.mkdir(parents=True, exist_ok=True)
    src = Path(source) if source is not None else bundled_gguf_path()
    params = read_gguf(src).n_parameters
    ref_path = folder / f"{(src.stem if source is not None else 'gemma-3-270m')}-{REFERENCE}.gguf"
    missing = [lvl for lvl in levels if not (folder / ref_path.name.replace(REFERENCE, lvl)).exists()]
    need = sum(params * _ladder_bits(lvl) / 8 for lvl in missing) + (0 if ref_path.exists() else params * 2)
    if need:
        require_disk_space(folder, need, "the quant ladder")
    from .paths import cache_lock

    with cache_lock("quant-ladder"):  # parallel workers and notebooks make each file once
        ref = reference_gguf(source)
        paths = {REFERENCE: ref}
        for level in tqdm(levels, desc="quant ladder", disable=not missing):
            out = ref.with_name(ref.name.replace(REFERENCE, level))
            if not out.exists():
                quantize_gguf(ref, level, out, threads)
            paths[level] = out
    return paths


# ============================================================================ 4. quality: perplexity, KLD, top-1


def evaluation_text() -> str:
    """The course's evaluation text (datasets/texts/evaluation.txt; written for the course, CC0)."""
    return (datasets_dir() / "texts" / "evaluation.txt").read_text()


def tokenize_for_eval(text: str | None = None, gguf: str | Path | None = None) -> list[int]:
    """Token ids of the evaluation text, by the GGUF's own tokenizer (llama.cpp, vocabulary only), with
    no BOS: `score` puts one at the start of every window. One tokenization for every model scored."""
    llama_cpp = _require_llama_cpp()
    path = validate_gguf(gguf) if gguf is not None else bundled_gguf_path()
    with _captured_stderr():  # llama.cpp logs a context warning even for a vocabulary-only load
        vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    ids = vocab.tokenize((text if text is not None else evaluation_text()).encode(), add_bos=False, special=False)
    bos = vocab.token_bos()
    del vocab
    return [bos, *ids]  # the first id is the BOS that every window starts with


@dataclass(frozen=True)
class Windows:
    """Sliding windows over the ids: each holds BOS + `window - 1` tokens and scores its last `stride`
    predictions, so every scored token sees at least `window - stride - 1` tokens of context."""

    window: int
    stride: int
    n_windows: int

    def spans(self, n_tokens: int) -> list[tuple[int, int]]:
        content = self.window - 1
        if n_tokens < content + 1:
            raise LabkitError(f"the evaluation text has {n_tokens} tokens, fewer than one window of {self.window}; "
                              "use a longer text or a smaller window")
        starts = list(range(0, n_tokens - content, self.stride))[: self.n_windows]
        if len(starts) < self.n_windows:
            raise LabkitError(f"the text's {n_tokens} tokens give only {len(starts)} windows of {self.window} with "
                              f"stride {self.stride}, not {self.n_windows}; use fewer windows or a longer text")
        return [(s, s + content) for s in starts]

    @property
    def scored_tokens(self) -> int:
        return self.n_windows * self.stride


def windows_for(profile_name: str) -> Windows:
    """The token budget per profile: the cpu profile scores 2 x 64 = 128 tokens; gpu 16 x 128 = 2,048."""
    if profile_name == "cpu":
        return Windows(window=128, stride=64, n_windows=2)
    return Windows(window=256, stride=128, n_windows=16)


@dataclass
class Scores:
    """One model's next-token predictions over the windows (and, given a reference, how they differ)."""

    name: str
    target_logprob: np.ndarray  # log p(actual next token), per scored token
    top1: np.ndarray  # the most likely token, per scored token
    seconds: float
    kld: np.ndarray | None = None  # KL(reference || this), per scored token
    full: np.ndarray | None = field(default=None, repr=False)  # (tokens, vocab) float16 log-probs, kept for a reference

    @property
    def perplexity(self) -> float:
        return float(np.exp(-self.target_logprob.mean()))

    def versus(self, reference: Scores) -> dict[str, float]:
        return {"ppl": self.perplexity, "delta_ppl": self.perplexity - reference.perplexity,
                "ppl_ratio": self.perplexity / reference.perplexity,
                "kld": float(self.kld.mean()) if self.kld is not None else float("nan"),
                "top1_agreement": float(np.mean(self.top1 == reference.top1))}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float32, copy=False)
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


def _window_logits_gguf(path: Path, windows: list[list[int]], window: int) -> Callable[[], Any]:
    loaded = load_llama_cpp(path, n_ctx=window, logits_all=True, n_batch=window)
    llm = loaded.model

    def run():
        for ids in windows:
            llm.reset()
            llm.eval(ids)
            yield np.array(llm.scores[: len(ids)], dtype=np.float32)

    return run


def _window_logits_transformers(model: Any, windows: list[list[int]]) -> Callable[[], Any]:
    import torch

    device = next(model.parameters()).device

    def run():
        for ids in windows:
            with torch.no_grad():
                out = model(input_ids=torch.tensor([ids], device=device)).logits[0]
            yield out.float().cpu().numpy()

    return run


def score(model: Any, ids: Sequence[int], windows: Windows, reference: Scores | None = None,
          keep_full: bool = False, name: str | None = None) -> Scores:
    """Score a GGUF file (path) or a transformers model on the same token ids and windows.

    `ids` comes from `tokenize_for_eval` (ids[0] is BOS). With `reference`, also the per-token KL
    divergence from it; `keep_full` keeps the full log-probabilities (to serve as a reference).
    """
    if reference is not None and reference.full is None:
        raise LabkitError("the reference Scores must be made with keep_full=True")
    bos, body = ids[0], list(ids[1:])
    spans = windows.spans(len(body))
    batches = [[bos, *body[s:e]] for s, e in spans]
    if isinstance(model, (str, Path)):
        path = validate_gguf(model)
        run = _window_logits_gguf(path, batches, windows.window)
        name = name or path.stem
    elif hasattr(model, "parameters") and callable(model):
        run = _window_logits_transformers(model, batches)
        name = name or type(model).__name__
    else:
        raise LabkitError(f"score takes a GGUF file path or a transformers model, got {type(model).__name__}")
    start = time.perf_counter()
    target, top1, klds, full = [], [], [], []
    row = 0
    for (_, e), logits in zip(spans, run()):
        # position j predicts token j+1; the window's last `stride` predictions are scored
        logp = _log_softmax(logits[-windows.stride - 1:-1])
        nxt = np.array(body[e - windows.stride:e])
        target.append(logp[np.arange(len(nxt)), nxt])
        top1.append(logp.argmax(axis=-1))
        if reference is not None:
            ref = reference.full[row:row + len(nxt)].astype(np.float32)
            klds.append(np.sum(np.exp(ref) * (ref - logp), axis=-1))
        if keep_full:
            full.append(logp.astype(np.float16))
        row += len(nxt)
    return Scores(name=name, target_logprob=np.concatenate(target), top1=np.concatenate(top1),
                  seconds=time.perf_counter() - start, kld=np.concatenate(klds) if klds else None,
                  full=np.concatenate(full) if full else None)


def perplexity(model: Any, ids: Sequence[int], windows: Windows) -> float:
    """Perplexity of a GGUF file or a transformers model on `ids`: exp(mean negative log-likelihood)."""
    return score(model, ids, windows).perplexity


def decode_speed(path: str | Path, max_new_tokens: int = 32, runs: int = 2) -> float:
    """llama.cpp decode tokens/s for a GGUF file (labkit.bench.benchmark: medians after a warm-up)."""
    llm = load_llama_cpp(path, n_ctx=256).model
    r = benchmark(Path(path).stem, lambda p: generate_llama_cpp(llm, p, max_new_tokens, stop_at_eos=False),
                  "The lighthouse keeper climbed the tower at dusk and", runs=runs, warmup=1)
    return r.decode_tokens_per_s


def quality_row(label: str, scores: Scores, reference: Scores, path: str | Path | None = None,
                tokens_per_s: float = float("nan")) -> dict:
    """One row of the ladder table: quality vs the reference, plus file size and bits per weight for a GGUF."""
    row = {"level": label, **scores.versus(reference)}
    if scores is reference:
        row["kld"] = 0.0
    if path is not None:
        info = read_gguf(path)
        blocks = [t for t in info.tensors if t.name.startswith("blk.")]
        row.update(file_mb=Path(path).stat().st_size / 1e6, bits_per_weight=info.bits_per_weight,
                   block_bits_per_weight=8 * sum(t.n_bytes for t in blocks) / sum(t.n_elements for t in blocks),
                   runtime="llama.cpp")
    else:
        row.update(file_mb=float("nan"), bits_per_weight=float("nan"), block_bits_per_weight=float("nan"),
                   runtime="transformers")
    row["tokens_per_s"] = tokens_per_s
    return row


def measure_ladder(paths: dict[str, Path], ids: Sequence[int], windows: Windows, reference: Scores | None = None,
                   speed_tokens: int = 32, speed_runs: int = 2) -> list[dict]:
    """The measured ladder: one row per GGUF level (reference first): file size, bits per weight, perplexity,
    KLD and top-1 agreement vs the reference, llama.cpp decode tokens/s (`speed_tokens=0` skips speed).

    `reference`: the reference's Scores made with keep_full=True (computed here from paths["F16"] if None).
    """
    from tqdm.auto import tqdm

    if REFERENCE not in paths:
        raise LabkitError(f"paths needs the reference level {REFERENCE!r} (build_ladder makes it)")
    ref = reference or score(paths[REFERENCE], ids, windows, keep_full=True, name=REFERENCE)
    rows = []
    order = [REFERENCE, *[k for k in paths if k != REFERENCE]]
    for level in tqdm(order, desc="scoring the ladder"):
        s = ref if level == REFERENCE else score(paths[level], ids, windows, reference=ref, name=level)
        speed = decode_speed(paths[level], speed_tokens, speed_runs) if speed_tokens else float("nan")
        rows.append(quality_row(level, s, ref, paths[level], speed))
    return rows


def ladder_markdown(rows: Sequence[dict]) -> str:
    lines = ["| level | runtime | file (MB) | bits/weight (file) | bits/weight (blocks) | perplexity | ΔPPL | KLD | "
             "top-1 agreement | tokens/s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        def num(v, fmt):
            return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        lines.append(f"| {r['level']} | {r['runtime']} | {num(r['file_mb'], ',.0f')} | {num(r['bits_per_weight'], '.2f')} | "
                     f"{num(r.get('block_bits_per_weight'), '.2f')} | "
                     f"{r['ppl']:.3f} | {r['delta_ppl']:+.3f} | {r['kld']:.4f} | {100 * r['top1_agreement']:.1f}% | "
                     f"{num(r['tokens_per_s'], '.1f')} |")
    return "\n".join(lines)


def monotonic_violations(rows: Sequence[dict], key: str = "ppl") -> list[tuple[str, str]]:
    """Pairs of GGUF levels (more bits, fewer bits) where `key` got better although bits fell."""
    gguf = sorted([r for r in rows if r["runtime"] == "llama.cpp"], key=lambda r: -r["bits_per_weight"])
    worse_is_higher = key in ("ppl", "kld", "delta_ppl")
    out = []
    for hi, lo in zip(gguf, gguf[1:]):
        if (lo[key] < hi[key]) if worse_is_higher else (lo[key] > hi[key]):
            out.append((hi["level"], lo["level"]))
    return out


def published_llama3_8b() -> list[dict]:
    """llama.cpp's published Llama 3 8B scoreboard (tools/perplexity/README.md; Wikitext-2, no imatrix),
    shipped as datasets/llama_cpp_llama3_8b_quality.csv."""
    import csv

    with (datasets_dir() / "llama_cpp_llama3_8b_quality.csv").open() as f:
        rows = [r for r in csv.DictReader(line for line in f if not line.startswith("#"))]
    return [{"level": r["level"], "size_gib": float(r["size_gib"]), "ppl": float(r["ppl"]),
             "kld": float(r["kld"])} for r in rows]


def plot_ladder(rows: Sequence[dict], published: Sequence[dict] | None = None):
    """Size vs quality: KLD (log scale) against bits per weight for the measured GGUF levels, next to
    llama.cpp's published Llama 3 8B numbers (bits per weight from their file sizes)."""
    import matplotlib.pyplot as plt

    gguf = [r for r in rows if r["runtime"] == "llama.cpp" and r["kld"] > 0]
    if not gguf:
        raise LabkitError("plot_ladder needs measured GGUF rows (from measure_ladder)")
    fig, (ax_kld, ax_ppl) = plt.subplots(1, 2, figsize=(12, 4.4))
    x = [r["bits_per_weight"] for r in gguf]
    ax_kld.plot(x, [r["kld"] for r in gguf], "o-", color="#d95f02", label="Gemma 3 270M (measured here)")
    for r in gguf:
        ax_kld.annotate(r["level"], (r["bits_per_weight"], r["kld"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    if published:
        params = 8.03e9
        pub = [p for p in published if p["kld"] > 0]
        ax_kld.plot([p["size_gib"] * 2**30 * 8 / params for p in pub], [p["kld"] for p in pub], "s--",
                    color="#7570b3", label="Llama 3 8B (llama.cpp's published table)")
    ax_kld.set_yscale("log")
    ax_kld.set_xlabel("bits per weight (whole file)")
    ax_kld.set_ylabel("mean KL divergence vs F16 (log)")
    ax_kld.set_title("Fewer bits, more damage")
    ax_kld.legend(fontsize=8)
    ax_ppl.plot(x, [r["ppl_ratio"] for r in gguf], "o-", color="#d95f02", label="Gemma 3 270M (measured)")
    if published:
        base = next(p["ppl"] for p in published if p["level"].lower() == "f16")
        ax_ppl.plot([p["size_gib"] * 2**30 * 8 / 8.03e9 for p in published], [p["ppl"] / base for p in published],
                    "s--", color="#7570b3", label="Llama 3 8B (published)")
    ax_ppl.axhline(1.0, color="grey", lw=1)
    ax_ppl.set_xlabel("bits per weight (whole file)")
    ax_ppl.set_ylabel("perplexity / reference perplexity")
    ax_ppl.set_title("Perplexity ratio")
    ax_ppl.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_weight_histogram(w: Any, q: Quantized | None = None, title: str = "weights", bins: int = 120):
    """Histogram of a weight tensor; with a Quantized, the values it can represent drawn as ticks."""
    import matplotlib.pyplot as plt

    w = _as_float_array(w).reshape(-1)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.hist(w, bins=bins, color="#66c2a5", log=True)
    if q is not None and q.group_size is None:
        grid = (np.unique(q.codes).astype(np.float32) - (q.zero if q.zero is not None else 0)) * q.scale
        ax.vlines(grid, *ax.get_ylim(), colors="#d62728", lw=0.4, alpha=0.6, label=f"{q.scheme} int{q.bits} levels")
        ax.legend(fontsize=8)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


# ============================================================================ what the ladder widget shows


def ladder_choice(rows: Sequence[dict], level: str, model: str = "llama-3.1-8b", gpu: str = "NVIDIA RTX 4090",
                  context: int = 8192) -> dict:
    """What picking `level` means: the measured quality of the bundled model at that level, and whether
    `model` (a shipped config) at that level, with `context` tokens, fits `gpu` (labkit.vram's estimate
    for llama.cpp). The widget shows this; tested on its own."""
    by_level = {r["level"]: r for r in rows}
    if level not in by_level:
        raise unknown("ladder level", level, list(by_level))
    r = by_level[level]
    dtype = "fp16" if level == REFERENCE else level
    runtime = "llama.cpp" if r["runtime"] == "llama.cpp" else "transformers"
    if runtime == "transformers":
        dtype = "int8" if "int8" in level else "nf4"
    est = vram.estimate_inference(model, dtype, context=context, runtime=runtime)
    fit = vram.fits(est, gpu)
    return {"level": level, "kld": r["kld"], "ppl": r["ppl"], "top1_agreement": r["top1_agreement"],
            "file_mb": r["file_mb"], "model": model, "gpu": gpu, "needed_gib": est.total / GIB,
            "weights_gib": est.weights / GIB, "fits": bool(fit), "fit": str(fit)}


# ============================================================================ exercises


@exercise("04.absmax_scale", hint="absmax int8: scale = the largest |weight| divided by 127 (the largest int8 code).",
          rtol=1e-4)
def _expected_absmax_scale(w: Any) -> float:
    return float(absmax_quantize(w, 8).scale)


@validator("04.groupwise_int4", hint="Reshape the weights into rows of group_size, take each row's max |w|, "
           "scale = that / 7, codes = round(w / scale) clipped to [-7, 7], then multiply back and reshape.")
def _validate_groupwise(answer: Any, w: Any, group_size: int) -> str | None:
    w = _as_float_array(w)
    try:
        w_hat = np.asarray(answer, dtype=np.float32)
    except (TypeError, ValueError):
        return f"expected an array of de-quantized weights, got {type(answer).__name__}"
    if w_hat.shape != w.shape:
        return f"it has shape {w_hat.shape}, not the weights' shape {w.shape}"
    if not np.isfinite(w_hat).all():
        return "it holds NaN or infinite values"
    distinct = max(len(np.unique(row)) for row in w_hat.reshape(-1, group_size))
    if distinct > 15:
        return f"a group holds {distinct} distinct values; 4-bit codes -7..7 allow at most 15"
    target = error_metrics(w, groupwise_quantize(w, 4, group_size).dequantize())["mse"]
    got = error_metrics(w, w_hat)["mse"]
    if got > target * 1.01:
        return f"its mean squared error is {got:.3g}, above the {target:.3g} group-wise int4 reaches"
    return None


@exercise("04.nf4_bits", hint="Per weight: 4 bits of code + one absmax per block (8 bits with double quant) / "
          "block size + the fp32 second-level scale / (block size × nested block).", rtol=1e-3)
def _expected_nf4_bits(block_size: int, nested_block: int) -> float:
    return nf4_bits_per_param(block_size, double_quant=True, nested_block=nested_block)


@validator("04.smallest_level", hint="Keep the rows whose top-1 agreement is at least the threshold, then take "
           "the one with the smallest file.")
def _validate_smallest(answer: Any, rows: Sequence[dict], min_top1: float) -> str | None:
    ok = [r for r in rows if r["runtime"] == "llama.cpp" and r["top1_agreement"] >= min_top1]
    if not ok:
        return None if answer == "none" else "no level reaches that agreement: the answer is 'none'"
    best = min(ok, key=lambda r: r["file_mb"])["level"]
    return None if answer == best else f"{answer!r} is not the smallest level that keeps {min_top1:.0%} agreement"

