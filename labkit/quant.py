"""Quantization: fewer bits per weight, measured on one real model and one text.

A quantizer stores each weight as a small integer code plus a few floats (scales, zero points) that
map the codes back to real numbers. The course's path through it, top to bottom:

1. By hand (numpy): absmax int8 (one scale per tensor), zero-point int8 (a scale and an offset),
   group-wise int4 (one scale per group of `group_size` weights) and NF4 (16 levels placed at the
   quantiles of a normal distribution, QLoRA's 4-bit type). Each returns a `Quantized` that knows its
   codes, its scales, its bits per weight and how to de-quantize; `error_metrics` scores it.
2. bitsandbytes: LLM.int8() and NF4 loads of the bundled model (labkit.quant_bnb).
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import vram
from .bench import benchmark
from .check import exercise, same_name, validator
from .dtypes import BITS_PER_WEIGHT
from .errors import LabkitError, require_positive, unknown
from .formatting import GIB
from .gguf_files import iter_dequantized, read_gguf, require_disk_space, write_gguf_like
from .hardware import cpu_threads
from .models import (
    BUNDLED,
    bundled_gguf_path,
    llama_cpp_logs,
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

    @property
    def perplexity_range(self) -> tuple[float, float]:
        """The perplexity's 95% interval from the scatter of the per-token log-likelihoods (mean ± 1.96 standard
        errors, the way llama.cpp's `perplexity` reports "PPL = x +/- y"): how far another text of the same
        length could move it. Neighbouring tokens are correlated, so the true scatter is, if anything, wider."""
        nll = -self.target_logprob.astype(np.float64)
        half = 1.96 * nll.std(ddof=1) / math.sqrt(len(nll)) if len(nll) > 1 else float("inf")
        return float(np.exp(nll.mean() - half)), float(np.exp(nll.mean() + half))

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
            # the reference's log-probabilities are stored in float16: renormalise them, so that the KL divergence
            # of identical models is 0 and never a rounding-sized negative number (a KL divergence is >= 0)
            ref = _log_softmax(reference.full[row:row + len(nxt)].astype(np.float32))
            klds.append(np.maximum(np.sum(np.exp(ref) * (ref - logp), axis=-1), 0.0))
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
                   runtime="llama.cpp", imatrix="quantize.imatrix.file" in info.metadata)  # llama-quantize notes it
    else:
        row.update(file_mb=float("nan"), bits_per_weight=float("nan"), block_bits_per_weight=float("nan"),
                   runtime="transformers", imatrix=False)
    row["tokens_per_s"] = tokens_per_s
    return row


def measure_ladder(paths: dict[str, Path], ids: Sequence[int], windows: Windows, reference: Scores | None = None,
                   speed_tokens: int = 32, speed_runs: int = 2) -> list[dict]:
    """The measured ladder: one row per GGUF level, from the most bits per weight to the fewest (the reference
    first): file size, bits per weight, perplexity, KLD and top-1 agreement vs the reference, llama.cpp decode
    tokens/s (`speed_tokens=0` skips speed). A level quantized with an importance matrix has `imatrix` True.

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
    return sorted(rows, key=lambda r: -r["bits_per_weight"])  # a ladder reads from the most bits to the fewest


def speed_markdown(rows: Sequence[dict], again_tokens_per_s: float, tokens: int, runs: int) -> str:
    """How far to trust the ladder's tokens/s column: the fastest and the slowest level, and the reference file
    timed a second time (`again_tokens_per_s`) against its first time: the noise of this machine, measured."""
    timed = [r for r in rows if r["runtime"] == "llama.cpp" and not math.isnan(r["tokens_per_s"])]
    if not timed:
        raise LabkitError("speed_markdown needs ladder rows measured with speed_tokens > 0 (measure_ladder)")
    first = next((r["tokens_per_s"] for r in timed if r["level"] == REFERENCE), None)
    if first is None:
        raise LabkitError(f"speed_markdown needs the reference row {REFERENCE!r} timed")
    require_positive("again_tokens_per_s", again_tokens_per_s)
    fastest = max(timed, key=lambda r: r["tokens_per_s"])
    slowest = min(timed, key=lambda r: r["tokens_per_s"])
    apart = abs(again_tokens_per_s - first) / min(again_tokens_per_s, first)
    return (f"Each level was timed over {runs} run{'s' if runs != 1 else ''} of {tokens} tokens. Fastest here: "
            f"**{fastest['level']}** ({fastest['tokens_per_s']:.1f} tokens/s); slowest: **{slowest['level']}** "
            f"({slowest['tokens_per_s']:.1f}). The {REFERENCE} file, timed again just now, ran at "
            f"**{again_tokens_per_s:.1f}** tokens/s against {first:.1f} in the table: **{100 * apart:.0f}%** apart on "
            "the same file. Gaps between levels smaller than that are this machine's noise (other programs, the "
            "CPU's clock), not a property of the type. To compare types for real, time each several times on an "
            "idle machine: llama.cpp's `llama-bench` does exactly that.")


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
    """Pairs of GGUF levels (more bits, fewer bits) where `key` got better although bits fell. Levels quantized
    with an importance matrix are left out: they are meant to beat their neighbours at the same size."""
    gguf = sorted([r for r in rows if r["runtime"] == "llama.cpp" and not r.get("imatrix")],
                  key=lambda r: -r["bits_per_weight"])
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

    measured = sorted([r for r in rows if r["runtime"] == "llama.cpp" and r["kld"] > 0],
                      key=lambda r: r["bits_per_weight"])
    gguf = [r for r in measured if not r.get("imatrix")]
    calibrated = [r for r in measured if r.get("imatrix")]
    if not gguf:
        raise LabkitError("plot_ladder needs measured GGUF rows (from measure_ladder)")
    fig, (ax_kld, ax_ppl) = plt.subplots(1, 2, figsize=(12, 4.4))
    x = [r["bits_per_weight"] for r in gguf]
    ax_kld.plot(x, [r["kld"] for r in gguf], "o-", color="#d95f02", label="Gemma 3 270M (measured here)")
    if calibrated:
        ax_kld.plot([r["bits_per_weight"] for r in calibrated], [r["kld"] for r in calibrated], "D", color="#1b9e77",
                    label="Gemma 3 270M with an imatrix (measured here)")
    for r in measured:
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
    if calibrated:
        ax_ppl.plot([r["bits_per_weight"] for r in calibrated], [r["ppl_ratio"] for r in calibrated], "D",
                    color="#1b9e77", label="with an imatrix (measured)")
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


@exercise("04.absmax_scale", rtol=1e-4,
          hint="The scale maps the weight farthest from zero onto the largest code a symmetric int8 scheme uses. "
               "Which weight is farthest from zero, whatever its sign, and which code is the largest?",
          slips={"taking the largest weight instead of the largest |weight| (the weight farthest from zero can be "
                 "negative)": lambda expected, w: float(np.max(_as_float_array(w))) / 127,
                 "dividing by 128 (symmetric int8 uses the codes -127..127)": 127 / 128,
                 "dividing by 255 (the whole range of codes: zero-point's scale, not absmax's)": 127 / 255,
                 "turning it upside down (127 / max|w| turns weights into codes; the scale turns codes back)":
                     lambda expected, **_: 1 / expected})
def _expected_absmax_scale(w: Any) -> float:
    return float(absmax_quantize(w, 8).scale)


def _groupwise_answer(answer: Any, w: Any) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(answer, dtype=np.float32), _as_float_array(w)


@validator("04.groupwise_int4",
           hint="Give each run of group_size consecutive weights its own scale, so that its largest |w| lands on the "
                "largest symmetric 4-bit code; round, clip, and multiply back. A reshape to one row per group makes "
                "each group's max one call.",
           slips={"one scale for the whole slice instead of one per group":
                      lambda answer, w, group_size: np.allclose(*_groupwise_answer(answer, w)[:1],
                                                                absmax_quantize(w, 4).dequantize(), rtol=1e-5),
                  "grouping down the columns instead of along each row (consecutive weights share a scale)":
                      lambda answer, w, group_size: np.allclose(
                          _groupwise_answer(answer, w)[0],
                          groupwise_quantize(np.ascontiguousarray(_as_float_array(w).T), 4, group_size)
                          .dequantize().T, rtol=1e-5),
                  "using 16 levels (codes -8..7): symmetric int4 has 15, -7..7":
                      lambda answer, w, group_size: max(len(np.unique(row)) for row in
                                                        np.asarray(answer, np.float32).reshape(-1, group_size)) == 16,
                  "returning the integer codes instead of the de-quantized weights (multiply back by the scale)":
                      lambda answer, w, group_size: np.array_equal(np.round(np.asarray(answer, np.float32)),
                                                                   np.asarray(answer, np.float32))})
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


@exercise("04.nf4_bits", rtol=1e-4,
          hint="Count every stored bit and share it among the weights it serves: a code serves one weight, a block's "
               "absmax serves a block of weights, a second-level scale serves a whole nested block of absmaxes. With "
               "double quantization, how many bits does each of the three take?",
          slips={"forgetting the fp32 second-level scale (one per nested block of absmaxes)":
                     lambda expected, block_size, nested_block: 4 + 8 / block_size,
                 "leaving out double quantization (an fp32 absmax per block)":
                     lambda expected, block_size, nested_block: 4 + 32 / block_size,
                 "storing the second-level scale in 8 bits (it is fp32: 32 bits)":
                     lambda expected, block_size, nested_block: 4 + 8 / block_size + 8 / (block_size * nested_block),
                 "leaving out the 4 bits of the code itself": lambda expected, **_: expected - 4})
def _expected_nf4_bits(block_size: int, nested_block: int) -> float:
    return nf4_bits_per_param(block_size, double_quant=True, nested_block=nested_block)


def _gguf_rows_reaching(rows: Sequence[dict], min_top1: float) -> list[dict]:
    return [r for r in rows if r["runtime"] == "llama.cpp" and r["top1_agreement"] >= min_top1]


@validator("04.smallest_level",
           hint="Filter first, then pick: which GGUF rows reach the threshold, and which of those has the smallest "
                "file? Each row carries the fields you need.",
           slips={"taking the best agreement instead of the smallest file that reaches the threshold":
                      lambda answer, rows, min_top1: same_name(answer, max(_gguf_rows_reaching(rows, min_top1),
                                                                           key=lambda r: r["top1_agreement"])["level"]),
                  "taking the smallest file whether or not it reaches the threshold":
                      lambda answer, rows, min_top1: same_name(answer, min(
                          (r for r in rows if r["runtime"] == "llama.cpp"), key=lambda r: r["file_mb"])["level"]),
                  "counting a bitsandbytes row (it has no file: the question is about GGUF files)":
                      lambda answer, rows, min_top1: any(same_name(answer, r["level"]) for r in rows
                                                         if r["runtime"] != "llama.cpp")})
def _validate_smallest(answer: Any, rows: Sequence[dict], min_top1: float) -> str | None:
    if not isinstance(answer, str):
        return f"answer with a level's name, a string such as 'Q6_K', not a {type(answer).__name__}"
    ok = _gguf_rows_reaching(rows, min_top1)
    if not ok:
        return None if same_name(answer, "none") else "no level reaches that agreement: the answer is 'none'"
    best = min(ok, key=lambda r: r["file_mb"])["level"]
    if same_name(answer, best):
        return None
    if not any(same_name(answer, r["level"]) for r in rows):
        return f"{answer!r} is not one of the levels measured: {', '.join(r['level'] for r in rows)}"
    return f"{answer!r} is not the smallest level that keeps {min_top1:.0%} agreement"
