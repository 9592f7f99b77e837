"""Attention three ways, and what each costs: notebook 06 (FlashAttention).

    softmax(Q K^T / sqrt(d)) V

1. **naive**: compute the whole N x N score matrix, softmax it, multiply by V. Simple, and its memory
   grows with N^2: at 16k tokens and 32 heads the scores alone are 16 GiB in bf16.
2. **tiled** (FlashAttention's idea, here in plain PyTorch): walk over K and V block by block and keep,
   per query row, a running maximum `m`, a running sum `l` and an unnormalised output `acc`. When a new
   block raises the maximum, rescale what you had by exp(m_old - m_new). The N x N matrix never exists;
   at most one block_q x block_k tile of it does. Same result, O(N) memory.
3. **fused kernels**: PyTorch's `scaled_dot_product_attention` (SDPA) picks a backend (flash, memory-
   efficient, cuDNN, or the plain math one) that does the tiling inside one GPU kernel, in fast on-chip
   SRAM, so the tiles never travel to HBM. labkit.attention_triton holds the course's own such kernel.

Shapes follow SDPA: q is (batch, heads, n_q, head_dim); k and v are (batch, kv_heads, n_k, head_dim),
with heads a multiple of kv_heads (grouped-query attention, GQA). `causal` lets query i see keys 0..i
(SDPA's convention); `window=w` (a sliding window, as in Mistral and Gemma) lets it see only the last w
of those.

Costs, per the FlashAttention papers' convention (Dao et al. 2022, arXiv:2205.14135; Dao 2023,
arXiv:2307.08691): the forward pass is two matrix products, 4 x batch x heads x n_q x n_k x head_dim
FLOPs, half of that when causal; the backward pass 2.5 x the forward.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .attention_inputs import check_qkv
from .bench import load_benchmark_results, median
from .check import exercise, validator
from .dtypes import bytes_per_weight, normalize_dtype, torch_dtype
from .errors import LabkitError, MissingPackageError, unknown
from .models import build_random_model
from .vram_measure import TensorMemoryTracker

# torch, matplotlib and tqdm are imported inside the functions that use them: `import labkit` stays quick and
# works without the optional extras.

SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")
VARIANTS = ("naive", "tiled", "sdpa", *(f"sdpa:{b}" for b in SDPA_BACKENDS), "triton")
BACKWARD_FACTOR = 2.5  # backward FLOPs / forward FLOPs (FlashAttention-2 paper, section 4.1)

# ============================================================================ checking inputs


def _check_window(window: int | None) -> None:
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise LabkitError(f"window must be a positive number of tokens or None, got {window!r}")


def attention_mask(n_q: int, n_k: int, causal: bool = False, window: int | None = None, device: Any = "cpu",
                   q_start: int = 0, k_start: int = 0):
    """Boolean (n_q, n_k) mask, True where query i may see key j; None when every pair is allowed.

    causal: j <= i. window w: also j > i - w (the last w keys up to i; with causal=False, i - w < j < i + w).
    q_start / k_start give the positions of the first row and column (for one tile of a bigger mask).
    """
    import torch

    _check_window(window)
    if not causal and window is None:
        return None
    i = torch.arange(q_start, q_start + n_q, device=device)[:, None]
    j = torch.arange(k_start, k_start + n_k, device=device)[None, :]
    keep = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    if causal:
        keep &= j <= i
    if window is not None:
        keep &= (i - j) < window
        if not causal:
            keep &= (j - i) < window
    return keep


# ============================================================================ 1. naive


def naive_attention(q, k, v, causal: bool = False, window: int | None = None, scale: float | None = None):
    """softmax(Q K^T * scale) V with the whole N x N score matrix in memory (as transformers' "eager" does).

    The softmax runs in fp32 and is cast back, like eager attention in transformers.
    """
    import torch

    s = check_qkv(q, k, v)
    scale = 1 / math.sqrt(s.head_dim) if scale is None else scale
    qg = (q * scale).unflatten(1, (s.kv_heads, s.group))  # (b, kv_heads, group, n_q, d): GQA without copying K/V
    scores = qg @ k.unsqueeze(2).transpose(-1, -2)  # (b, kv_heads, group, n_q, n_k): THE N x N matrix
    keep = attention_mask(s.n_q, s.n_k, causal, window, q.device)
    if keep is not None:
        scores.masked_fill_(~keep, float("-inf"))
    probs = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
    del scores  # free the scores before P V (the probabilities are the N x N matrix now)
    return (probs @ v.unsqueeze(2)).flatten(1, 2)


# ============================================================================ 2. tiled, online softmax


@dataclass
class SoftmaxState:
    """The running statistics of the online softmax, per query row.

    m: the largest score seen so far; l: the sum of exp(score - m) so far;
    acc: the sum of exp(score - m) * value so far (the output before dividing by l).
    """

    m: Any
    l: Any  # noqa: E741 (the papers' name)
    acc: Any

    @classmethod
    def empty(cls, rows_shape: Sequence[int], head_dim: int, device: Any = "cpu") -> SoftmaxState:
        import torch

        shape = (*rows_shape, 1)
        return cls(m=torch.full(shape, float("-inf"), device=device), l=torch.zeros(shape, device=device),
                   acc=torch.zeros(*rows_shape, head_dim, device=device))

    def output(self):
        """The attention output: acc / l."""
        return self.acc / self.l


def online_softmax_update(state: SoftmaxState, scores, v_block) -> SoftmaxState:
    """Fold one block of scores (rows x block_k, already scaled and masked with -inf) and its values in.

        m_new = max(m, rowmax(scores))
        p     = exp(scores - m_new)
        l_new = l * exp(m - m_new) + rowsum(p)
        acc   = acc * exp(m - m_new) + p @ V_block
    """
    import torch

    m_new = torch.maximum(state.m, scores.amax(-1, keepdim=True))
    m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # a row with nothing to see yet
    correction = torch.exp(state.m - m_safe)
    p = torch.exp(scores - m_safe)
    return SoftmaxState(m=m_new, l=state.l * correction + p.sum(-1, keepdim=True),
                        acc=state.acc * correction + p @ v_block.to(p.dtype))


def tiled_attention(q, k, v, causal: bool = False, window: int | None = None, scale: float | None = None,
                    block_q: int = 128, block_k: int = 128):
    """The same attention as naive_attention, one (block_q x block_k) tile at a time, never holding N x N.

    Tiles that the mask hides entirely are skipped (that is why causal attention costs half); only
    tiles on the mask's edge build a mask. Accumulates in fp32 and returns q's dtype.
    """
    import torch

    s = check_qkv(q, k, v)
    _check_window(window)
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LabkitError(f"{name} must be a positive integer, got {value!r}")
    scale = 1 / math.sqrt(s.head_dim) if scale is None else scale
    qg = (q.float() * scale).unflatten(1, (s.kv_heads, s.group))
    kt, vf = k.float().unsqueeze(2).transpose(-1, -2), v.float().unsqueeze(2)
    out = torch.empty(*qg.shape, dtype=q.dtype, device=q.device)
    for q0 in range(0, s.n_q, block_q):
        q1 = min(q0 + block_q, s.n_q)
        state = SoftmaxState.empty(qg[..., q0:q1, :].shape[:-1], s.head_dim, q.device)
        for k0 in range(0, s.n_k, block_k):
            k1 = min(k0 + block_k, s.n_k)
            if not _tile_visible(q0, q1, k0, k1, causal, window):
                continue
            scores = qg[..., q0:q1, :] @ kt[..., k0:k1]
            if not _tile_fully_visible(q0, q1, k0, k1, causal, window):  # an edge tile: mask it
                keep = attention_mask(q1 - q0, k1 - k0, causal, window, q.device, q_start=q0, k_start=k0)
                scores = scores.masked_fill(~keep, float("-inf"))
            state = online_softmax_update(state, scores, vf[..., k0:k1, :])
        out[..., q0:q1, :] = state.output().to(q.dtype)
    return out.flatten(1, 2)


def _tile_fully_visible(q0: int, q1: int, k0: int, k1: int, causal: bool, window: int | None) -> bool:
    """True when the mask hides no (query, key) pair of the tile: it needs no mask at all."""
    if causal and k1 - 1 > q0:  # the last key is after the first query
        return False
    if window is not None and (q1 - 1) - k0 >= window:  # the first key is out of the last query's window
        return False
    if window is not None and not causal and (k1 - 1) - q0 >= window:
        return False
    return True


def _tile_visible(q0: int, q1: int, k0: int, k1: int, causal: bool, window: int | None) -> bool:
    """False when the mask hides every (query, key) pair of the tile rows q0..q1-1 x keys k0..k1-1."""
    if causal and k0 > q1 - 1:  # every key is after every query
        return False
    if window is not None and (q0 - (k1 - 1)) >= window:  # every key is out of every query's window
        return False
    if window is not None and not causal and (k0 - (q1 - 1)) >= window:
        return False
    return True


# ============================================================================ 3. PyTorch's fused kernels


def _sdpa_backend_enum(name: str):
    from torch.nn.attention import SDPBackend

    names = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    if name not in names:
        raise unknown("SDPA backend", name, SDPA_BACKENDS)
    return names[name]


def sdpa(q, k, v, causal: bool = False, window: int | None = None, scale: float | None = None,
         backend: str | None = None):
    """torch.nn.functional.scaled_dot_product_attention, forced onto one backend when `backend` is given.

    A sliding window becomes a boolean mask (the flash backend takes no mask, so PyTorch then picks
    another). A backend that cannot run these inputs raises a LabkitError naming the ones that can.
    """
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    s = check_qkv(q, k, v)
    mask = attention_mask(s.n_q, s.n_k, causal, window, q.device) if window is not None else None
    kwargs = dict(attn_mask=mask, is_causal=causal and mask is None, scale=scale, enable_gqa=s.group > 1)
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    enum = _sdpa_backend_enum(backend)
    try:
        with sdpa_kernel(enum):
            return F.scaled_dot_product_attention(q, k, v, **kwargs)
    except RuntimeError as err:
        if "out of memory" in str(err).lower() or isinstance(err, torch.OutOfMemoryError):
            raise
        works = supported_sdpa_backends(q.dtype, s.head_dim, q.device, causal=causal, window=window, group=s.group)
        raise LabkitError(
            f"the SDPA backend {backend!r} cannot run {str(q.dtype).removeprefix('torch.')} attention with head_dim "
            f"{s.head_dim}{' and a window mask' if window else ''} on {q.device}. Backends that can: "
            f"{', '.join(works) or 'none'}") from None


def supported_sdpa_backends(dtype: Any = None, head_dim: int = 64, device: Any = None, causal: bool = True,
                            window: int | None = None, group: int = 1) -> list[str]:
    """The SDPA backends that run on this device for this dtype and head_dim (tried on a tiny problem)."""
    import warnings

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or torch.float32
    q = torch.randn(1, group, 16, head_dim, dtype=dtype, device=device)
    k = torch.randn(1, 1, 16, head_dim, dtype=dtype, device=device)
    mask = attention_mask(16, 16, causal, window, device) if window is not None else None
    works = []
    for name in SDPA_BACKENDS:
        try:
            with warnings.catch_warnings(), sdpa_kernel(_sdpa_backend_enum(name)):
                warnings.simplefilter("ignore")
                F.scaled_dot_product_attention(q, k, k, attn_mask=mask, is_causal=causal and mask is None,
                                               enable_gqa=group > 1)
            works.append(name)
        except RuntimeError:
            pass
    return works


def triton_attention(q, k, v, causal: bool = False, window: int | None = None, scale: float | None = None):
    """The course's FlashAttention forward kernel in Triton (labkit/attention_triton.py): NVIDIA GPUs only."""
    import torch

    if window is not None:
        raise LabkitError("the course's Triton kernel has no sliding window; use sdpa(..., window=) or tiled_attention")
    import os

    # the device first: on a machine without an NVIDIA GPU, installing triton would not help (seen on a CPU run of 06)
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        where = "this machine has no CUDA GPU" if not torch.cuda.is_available() else f"the tensors are on {q.device}"
        raise LabkitError(f"the Triton kernel runs on an NVIDIA GPU (CUDA), and {where}. On this device use "
                          f"tiled_attention, naive_attention or sdpa (backends here: "
                          f"{', '.join(supported_sdpa_backends(q.dtype, q.shape[-1], q.device))})")
    try:
        import triton  # noqa: F401
    except ImportError:
        raise MissingPackageError("triton", "The Triton FlashAttention kernel") from None
    # imported here, not at the top: attention_triton imports triton, which only CUDA machines have
    from .attention_triton import flash_attention_forward

    return flash_attention_forward(q, k, v, causal=causal, scale=scale)


def triton_kernel_source() -> str:
    """The Triton kernel's source, readable on any machine (the file is not imported)."""
    return (Path(__file__).with_name("attention_triton.py")).read_text()


def attention_function(variant: str) -> Callable[..., Any]:
    """The callable for a variant name: 'naive', 'tiled', 'sdpa', 'sdpa:<backend>' or 'triton'."""
    if variant == "naive":
        return naive_attention
    if variant == "tiled":
        return tiled_attention
    if variant == "sdpa":
        return sdpa
    if variant == "triton":
        return triton_attention
    if variant.startswith("sdpa:") and variant[5:] in SDPA_BACKENDS:
        backend = variant[5:]
        return lambda q, k, v, causal=False, window=None, scale=None: sdpa(q, k, v, causal, window, scale, backend)
    raise unknown("attention variant", variant, VARIANTS)


# ============================================================================ costs: FLOPs, bytes, memory


def _bytes_per_value(dtype: Any) -> int:
    return int(bytes_per_weight(normalize_dtype(str(dtype))))


def attention_flops(seq_len: int, heads: int, head_dim: int, batch: int = 1, causal: bool = False,
                    backward: bool = False) -> float:
    """FLOPs of attention: 4 * batch * heads * N^2 * head_dim forward (Q K^T and P V, 2 FLOPs per
    multiply-add), halved when causal; x (1 + 2.5) with the backward pass."""
    flops = 4.0 * batch * heads * seq_len * seq_len * head_dim
    if causal:
        flops /= 2
    return flops * (1 + BACKWARD_FACTOR) if backward else flops


def scores_bytes(seq_len: int, heads: int, dtype: Any = "bf16", batch: int = 1) -> float:
    """Bytes of ONE N x N score matrix per head: batch * heads * N^2 * bytes per value."""
    return float(batch * heads * seq_len * seq_len * _bytes_per_value(dtype))


def naive_peak_bytes(seq_len: int, heads: int, head_dim: int, dtype: Any = "bf16", batch: int = 1,
                     masked: bool = False) -> float:
    """Estimated extra memory naive_attention holds at its peak, the softmax (inputs not counted).

    Alive together: the scaled Q (N x head_dim), the scores (dtype), the boolean N x N mask when
    masked, and the fp32 softmax; in bf16/fp16 also the fp32 copy of the scores that PyTorch makes
    before the softmax (seen on a CPU and on an H200): 2 + 4 + 4 = 10 bytes per score in bf16, 8 in fp32.
    At 16k tokens and 32 heads in bf16 that is 80 GiB; the H200 measured 80.4 GiB.
    """
    e = _bytes_per_value(dtype)
    per_score = 4 + 4 + (e if e != 4 else 0)
    n2 = batch * heads * seq_len * seq_len
    return float(n2 * per_score + (seq_len * seq_len if masked else 0) + batch * heads * seq_len * head_dim * e)


def flash_peak_bytes(seq_len: int, heads: int, head_dim: int, dtype: Any = "bf16", batch: int = 1) -> float:
    """Estimated extra memory of a fused (flash) kernel: the output plus one fp32 log-sum-exp per row."""
    return float(batch * heads * seq_len * (head_dim * _bytes_per_value(dtype) + 4))


def hbm_bytes(variant: str, seq_len: int, heads: int, head_dim: int, dtype: Any = "bf16", batch: int = 1,
              kv_heads: int | None = None) -> float:
    """Bytes a forward pass must move to and from memory at the least.

    Fused kernels: read Q, K, V once and write O. Naive: also write the scores, read them for the
    softmax, write the probabilities and read them for P V: 4 more passes over N x N.
    """
    if variant not in VARIANTS:
        raise unknown("attention variant", variant, VARIANTS)
    e = _bytes_per_value(dtype)
    kv_heads = kv_heads or heads
    io = batch * seq_len * head_dim * e * (2 * heads + 2 * kv_heads)
    if variant in ("naive", "sdpa:math"):
        io += 4 * scores_bytes(seq_len, heads, dtype, batch)
    return float(io)


# ============================================================================ measuring


@dataclass
class AttentionRun:
    """One timed attention call: a variant at one size on one device."""

    variant: str
    seq_len: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    device: str
    causal: bool
    backward: bool
    ms: float | None  # median time per call
    peak_bytes: float | None  # extra memory at the peak (inputs not counted)
    flops: float
    bytes_moved: float  # hbm_bytes of the forward pass
    error: str = ""  # why it did not run (out of memory, unsupported), else ""

    @property
    def tflops(self) -> float | None:
        return self.flops / (self.ms / 1e3) / 1e12 if self.ms else None

    @property
    def intensity(self) -> float:
        """Arithmetic intensity of the forward pass: FLOPs per byte moved."""
        return attention_flops(self.seq_len, self.heads, self.head_dim, causal=self.causal) / self.bytes_moved

    def as_row(self) -> dict:
        return {**asdict(self), "tflops": self.tflops, "intensity": self.intensity}

    def __str__(self) -> str:
        what = f"{self.variant:<15} N={self.seq_len:>6} {'fwd+bwd' if self.backward else 'fwd    '}"
        if self.error:
            return f"{what}  -- {self.error}"
        mem = f"{self.peak_bytes / 2**20:10.1f} MiB" if self.peak_bytes is not None else " " * 14
        return (f"{what} {self.ms:9.2f} ms {mem} {self.tflops:8.3g} TFLOP/s  "
                f"intensity {self.intensity:7.1f} FLOP/B")


def random_qkv(seq_len: int, heads: int = 8, head_dim: int = 64, kv_heads: int | None = None, batch: int = 1,
               dtype: Any = "fp32", device: Any = "cpu", requires_grad: bool = False, seed: int = 0):
    """Random q, k, v for one attention problem (standard normal, like real activations after a norm)."""
    import torch

    kv_heads = kv_heads or heads
    g = torch.Generator(device="cpu").manual_seed(seed)
    tdtype = torch_dtype(str(dtype).removeprefix("torch."))
    make = lambda h: torch.randn(batch, h, seq_len, head_dim, generator=g).to(device=device, dtype=tdtype)  # noqa: E731
    q, k, v = make(heads), make(kv_heads), make(kv_heads)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


def time_call(fn: Callable[[], Any], device: Any, runs: int = 3, warmup: int = 1) -> float:
    """Median milliseconds of fn() over `runs` calls after `warmup` calls (CUDA events on a GPU)."""
    import torch

    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return median(times)


def peak_memory(fn: Callable[[], Any], device: Any) -> float:
    """Extra bytes allocated at the peak of one fn() call: torch.cuda.max_memory_allocated on a GPU,
    labkit.vram_measure.TensorMemoryTracker on a CPU (the tensors PyTorch creates; a fused kernel's private
    scratch buffers are not seen there)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)

    with TensorMemoryTracker() as tracker:
        fn()
    return float(tracker.peak)


def measure_attention(variant: str, seq_len: int, heads: int = 8, head_dim: int = 64, kv_heads: int | None = None,
                      dtype: Any = "fp32", device: Any = "cpu", causal: bool = True, backward: bool = False,
                      runs: int = 3, memory: bool = True, batch: int = 1) -> AttentionRun:
    """Time (and measure the peak memory of) one attention variant on random inputs.

    Running out of memory, or a backend that cannot run these inputs, is recorded in `error`
    rather than raised, so a sweep carries on past it.
    """
    import torch

    fn = attention_function(variant)

    dtype = normalize_dtype(str(dtype).removeprefix("torch."))
    kv_heads = kv_heads or heads
    run = AttentionRun(variant, seq_len, heads, kv_heads, head_dim, dtype, str(device), causal, backward, None,
                       None, attention_flops(seq_len, heads, head_dim, batch, causal, backward),
                       hbm_bytes(variant, seq_len, heads, head_dim, dtype, batch, kv_heads))
    try:
        q, k, v = random_qkv(seq_len, heads, head_dim, kv_heads, batch, dtype, device, requires_grad=backward)
        if backward:
            grad = torch.randn_like(q)

            def call():
                out = fn(q, k, v, causal=causal)
                out.backward(grad)
                q.grad = k.grad = v.grad = None
        else:
            def call():
                with torch.no_grad():
                    return fn(q, k, v, causal=causal)
        run.ms = time_call(call, device, runs=runs)
        if memory:
            run.peak_bytes = peak_memory(call, device)
    except torch.OutOfMemoryError:
        run.error = "out of memory"
    except (LabkitError, MissingPackageError, NotImplementedError) as err:
        run.error = str(err).splitlines()[0]
    except Exception as err:  # the Triton kernel failing to compile on an older GPU (e.g. bf16 on a T4)
        if variant != "triton":
            raise
        run.error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    finally:
        q = k = v = None  # noqa: F841
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return run


def sweep(variants: Sequence[str], seq_lens: Sequence[int], heads: int = 8, head_dim: int = 64,
          kv_heads: int | None = None, dtype: Any = "fp32", device: Any = "cpu", causal: bool = True,
          backward: bool = False, runs: int = 3, memory: bool = True, progress: bool = True) -> list[AttentionRun]:
    """measure_attention for every variant at every sequence length (a tqdm bar shows progress).

    A variant that ran out of memory at one length is not tried at longer ones.
    """
    from tqdm.auto import tqdm

    for variant in variants:
        attention_function(variant)  # unknown names fail before any work
    results, failed = [], set()
    cells = [(n, v) for n in seq_lens for v in variants]
    for n, variant in tqdm(cells, desc="attention sweep", disable=not progress):
        if variant in failed:
            results.append(AttentionRun(variant, n, heads, kv_heads or heads, head_dim, str(dtype), str(device), causal,
                                        backward, None, None, attention_flops(n, heads, head_dim, 1, causal, backward),
                                        hbm_bytes(variant, n, heads, head_dim, dtype, 1, kv_heads), "skipped: "
                                        "out of memory at a shorter length"))
            continue
        run = measure_attention(variant, n, heads, head_dim, kv_heads, dtype, device, causal, backward, runs, memory)
        if run.error == "out of memory":
            failed.add(variant)
        results.append(run)
    return results


def results_table(runs: Sequence[AttentionRun]) -> str:
    """A text table: one line per run."""
    return "\n".join(str(r) for r in runs)


def sweep_markdown(runs: Sequence[AttentionRun], fused: str, tiled: str = "tiled") -> str:
    """The sweep in sentences, with its numbers: how memory grew from the shortest to the longest N for naive and
    fused attention, and where the plain-PyTorch tiled version stands in time against both."""
    by = {(r.variant, r.seq_len): r for r in runs if r.ms}
    lengths = sorted({n for v, n in by if v == "naive" and (fused, n) in by})
    if len(lengths) < 2:
        raise LabkitError(f"sweep_markdown needs naive and {fused} runs at two lengths or more")
    lo, hi = lengths[0], lengths[-1]
    growth = hi / lo

    def mem(variant: str) -> float:
        return by[(variant, hi)].peak_bytes / by[(variant, lo)].peak_bytes

    text = (f"From N = {lo:,} to {hi:,} ({growth:.0f}x longer), naive attention's extra memory grew "
            f"**{mem('naive'):.0f}x** (N² would be {growth ** 2:.0f}x) and {fused}'s **{mem(fused):.0f}x** (N: "
            f"{growth:.0f}x). At N = {hi:,}: naive {by[('naive', hi)].ms:.1f} ms, {fused} {by[(fused, hi)].ms:.1f} ms")
    if (tiled, hi) in by:
        t, naive_ms, fused_ms = by[(tiled, hi)].ms, by[("naive", hi)].ms, by[(fused, hi)].ms
        text += (f", the plain-PyTorch tiled version {t:.1f} ms: {naive_ms / t:.1f}x naive's speed and "
                 f"{fused_ms / t:.2f}x {fused}'s. ")
        text += ("It beats naive attention here: it skips the tiles the causal mask hides and never writes the N x N "
                 "matrix, even though Python launches a few small operations per tile. "
                 if t < naive_ms else
                 "It is slower than naive attention here: Python launches a few small operations per tile, and at "
                 "these sizes that costs more than the N x N round trips it saves. ")
        text += ("Either way it trails the fused kernel, which runs the same tiling inside one kernel, in on-chip "
                 "memory: the idea has to live there, which is what FlashAttention, and the Triton kernel of section 9, "
                 "are." if fused_ms < t else
                 "On this machine it even keeps up with the fused kernel; on a GPU the fused kernel's on-chip tiles win "
                 "by far (the committed run below).")
    else:
        text += "."
    return text


def speedup_table(runs: Sequence[AttentionRun], baseline: str = "naive") -> list[dict]:
    """Per sequence length and variant: speed-up and memory ratio against `baseline` (where both ran)."""
    base = {r.seq_len: r for r in runs if r.variant == baseline and r.ms}
    rows = []
    for r in runs:
        b = base.get(r.seq_len)
        if r.ms and b is not None and r.variant != baseline:
            rows.append(dict(seq_len=r.seq_len, variant=r.variant, speedup=b.ms / r.ms,
                             memory_ratio=(b.peak_bytes / r.peak_bytes) if (b.peak_bytes and r.peak_bytes) else None))
    return rows


# ============================================================================ transformers: eager vs sdpa


def measure_transformers_attention(model: str = "qwen2.5-0.5b", implementations: Sequence[str] = ("eager", "sdpa"),
                                   seq_len: int = 512, dtype: str = "fp32", device: Any = "cpu", runs: int = 2,
                                   **overrides: Any) -> list[dict]:
    """One prefill forward pass of a real architecture (RANDOM weights) under each `attn_implementation`.

    Returns rows with the time and the peak extra memory. `overrides` change config fields
    (e.g. num_hidden_layers=2 for a quick CPU run).
    """
    import torch

    accepted = ("eager", "sdpa")
    for impl in implementations:
        if impl not in accepted:
            raise unknown("attn_implementation", impl, accepted)
    loaded = build_random_model(model, dtype=dtype, device=device, **overrides)
    net = loaded.model
    vocab = net.config.vocab_size
    ids = torch.randint(0, vocab, (1, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    rows = []
    for impl in implementations:
        if hasattr(net, "set_attn_implementation"):
            net.set_attn_implementation(impl)
        else:  # older transformers read the choice off the config at every forward
            net.config._attn_implementation = impl

        def call():
            with torch.no_grad():
                net(input_ids=ids, use_cache=False, logits_to_keep=1)
        try:
            ms = time_call(call, device, runs=runs)
            peak = peak_memory(call, device)
            rows.append(dict(model=model, implementation=impl, seq_len=seq_len, dtype=dtype, ms=ms, peak_bytes=peak,
                             layers=net.config.num_hidden_layers, random_weights=True, error=""))
        except torch.OutOfMemoryError:
            rows.append(dict(model=model, implementation=impl, seq_len=seq_len, dtype=dtype, ms=None, peak_bytes=None,
                             layers=net.config.num_hidden_layers, random_weights=True, error="out of memory"))
            torch.cuda.empty_cache()
    return rows


# ============================================================================ equality


def equality_report(shapes: Sequence[dict] | None = None, dtype: Any = "fp32", device: Any = "cpu",
                    variants: Sequence[str] = ("naive", "tiled", "sdpa")) -> list[dict]:
    """Max |variant - reference| for each problem, the reference being SDPA's math in float64 on the CPU.

    A problem is a dict of seq_len, heads, kv_heads, head_dim, causal, window (defaults: a few covering
    MHA, GQA, causal and a sliding window, with lengths that are not a multiple of the tile).
    """
    import torch.nn.functional as F

    shapes = shapes or [
        dict(seq_len=100, heads=4, kv_heads=4, head_dim=32, causal=False, window=None),
        dict(seq_len=130, heads=8, kv_heads=2, head_dim=64, causal=True, window=None),
        dict(seq_len=200, heads=4, kv_heads=1, head_dim=16, causal=True, window=48),
    ]
    rows = []
    for i, p in enumerate(shapes):
        q, k, v = random_qkv(p["seq_len"], p["heads"], p["head_dim"], p["kv_heads"], dtype=dtype, device=device, seed=i)
        mask = attention_mask(p["seq_len"], p["seq_len"], p["causal"], p["window"]) if p.get("window") else None
        ref = F.scaled_dot_product_attention(q.cpu().double(), k.cpu().double(), v.cpu().double(), attn_mask=mask,
                                             is_causal=p["causal"] and mask is None,
                                             enable_gqa=p["heads"] != p["kv_heads"])
        row = dict(p)
        for variant in variants:
            out = attention_function(variant)(q, k, v, causal=p["causal"], window=p.get("window"))
            row[variant] = (out.cpu().double() - ref).abs().max().item()
        rows.append(row)
    return rows


# ============================================================================ plots and committed results


def plot_sweep(runs: Sequence[AttentionRun], title: str = "Attention: time and memory vs sequence length",
               estimates: dict[str, Callable[[int], float]] | None = None):
    """Two log-log panels: time vs N and peak memory vs N, one line per variant; dashed lines are
    estimates (name -> bytes as a function of N) drawn beside the measured memory."""
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for variant in dict.fromkeys(r.variant for r in runs):
        rows = [r for r in runs if r.variant == variant and r.ms]
        if not rows:
            continue
        ns = [r.seq_len for r in rows]
        line, = ax_t.plot(ns, [r.ms for r in rows], "o-", label=variant)
        mem = [(r.seq_len, r.peak_bytes) for r in rows if r.peak_bytes]
        if mem:
            ax_m.plot([n for n, _ in mem], [b / 2**20 for _, b in mem], "o-", color=line.get_color(), label=variant)
    all_n = sorted({r.seq_len for r in runs})
    for (name, estimate), colour in zip((estimates or {}).items(), ("black", "grey", "tab:olive", "tab:cyan")):
        ax_m.plot(all_n, [estimate(n) / 2**20 for n in all_n], "--", color=colour, label=f"{name} (estimate)")
    for ax, label in ((ax_t, "milliseconds per call"), (ax_m, "peak extra memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(label)
    ax_t.set_title("time")
    ax_m.set_title("memory")
    ax_m.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_tiles(seq_len: int = 16, block_q: int = 4, block_k: int = 4, causal: bool = True,
               window: int | None = None):
    """The score matrix cut into tiles: the tiles tiled_attention computes whole, the ones it masks
    in part (the diagonal, the window's edge), and the ones it never visits."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    keep = attention_mask(seq_len, seq_len, causal, window)
    keep = np.ones((seq_len, seq_len), bool) if keep is None else keep.numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(keep, cmap="Greys", vmin=0, vmax=2.5, origin="upper")
    colours = {"computed": "tab:green", "masked in part": "tab:orange", "skipped": "tab:red"}
    counts = dict.fromkeys(colours, 0)
    for q0 in range(0, seq_len, block_q):
        for k0 in range(0, seq_len, block_k):
            q1, k1 = min(q0 + block_q, seq_len), min(k0 + block_k, seq_len)
            tile = keep[q0:q1, k0:k1]
            kind = "skipped" if not _tile_visible(q0, q1, k0, k1, causal, window) else (
                "computed" if tile.all() else "masked in part")
            counts[kind] += 1
            ax.add_patch(Rectangle((k0 - 0.5, q0 - 0.5), k1 - k0, q1 - q0, fill=kind != "skipped", alpha=0.35,
                                   facecolor=colours[kind], edgecolor=colours[kind], lw=1.5,
                                   hatch="xx" if kind == "skipped" else None))
    for kind, colour in colours.items():
        ax.plot([], [], "s", color=colour, label=f"{kind}: {counts[kind]} tiles")
    ax.set_xlabel("key position j (K, V tiles of block_k)")
    ax.set_ylabel("query position i (Q tiles of block_q)")
    ax.set_title(f"N={seq_len}, tiles {block_q}x{block_k}, causal={causal}, window={window}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize=8)
    ax.grid(False)
    fig.tight_layout()
    return fig


def load_gpu_results() -> dict | None:
    """The committed GPU benchmark (datasets/results/attention_gpu.json), or None when absent."""
    return load_benchmark_results("attention_gpu")


def load_long_context_results() -> dict | None:
    """The committed benchmarks/long_context_gpu.py run (llama.cpp's flash attention off and on, on a GPU), or None
    while that run has not been committed yet (a result still to come, not a broken install)."""
    from .paths import results_dir

    return load_benchmark_results("long_context_gpu") if (results_dir() / "long_context_gpu.json").is_file() else None


def committed_runs(results: dict | None = None, key: str = "sweep_forward") -> list[AttentionRun]:
    """AttentionRun rows from the committed GPU results (for plots on a machine without a GPU)."""
    results = results if results is not None else load_gpu_results()
    if not results:
        return []
    fields = AttentionRun.__dataclass_fields__
    return [AttentionRun(**{k: v for k, v in row.items() if k in fields}) for row in results.get(key, [])]


# ============================================================================ exercises


@exercise("06.scores_bytes",
          hint="Each head scores every query against every key. How many numbers is that for one head, how many "
               "heads have their own, and how many bytes does one bf16 number take? The answer is in bytes.",
          slips={"counting one head (every head has its own N x N matrix)": lambda expected, heads, **_: expected / heads,
                 "using 4 bytes per value (fp32) where bf16's 2 are asked": 2.0,
                 "dividing by 2**30 (GiB) where bytes are asked": 2**-30})
def _expected_scores_bytes(seq_len: int, heads: int, dtype: str = "bf16", batch: int = 1) -> float:
    return scores_bytes(seq_len, heads, dtype, batch)


# --- 06.online_update: the learner's update folded over blocks, and the slips it can show


def _online_problem():
    """Five query rows, sixteen keys in blocks of four; scores large enough that exp() without the max overflows,
    and one row whose second half is masked."""
    import torch

    g = torch.Generator().manual_seed(6)
    q, k, v = torch.randn(5, 8, generator=g), torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    scores = (q @ k.T) * 16.0  # up to ~130: exp() of that overflows float32 (its limit is exp(88))
    scores[0, 8:] = float("-inf")
    return scores, v


def _fold(update: Callable[..., Any], blocks: int = 4) -> SoftmaxState:
    scores, v = _online_problem()
    state = SoftmaxState.empty((5,), 8)
    for start in range(0, 4 * blocks, 4):
        state = update(state, scores[:, start:start + 4], v[start:start + 4])
    return state


def _variant_update(rescale_l: bool = True, rescale_acc: bool = True) -> Callable[..., SoftmaxState]:
    """online_softmax_update with one of its rescalings left out: what a learner who forgets it computes."""
    import torch

    def update(state: SoftmaxState, scores, v_block) -> SoftmaxState:
        m_new = torch.maximum(state.m, scores.amax(-1, keepdim=True))
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        correction = torch.exp(state.m - m_safe)
        p = torch.exp(scores - m_safe)
        return SoftmaxState(m=m_new, l=(state.l * correction if rescale_l else state.l) + p.sum(-1, keepdim=True),
                            acc=(state.acc * correction if rescale_acc else state.acc) + p @ v_block)

    return update


def _same_as(update: Callable[..., Any], variant: Callable[..., Any]) -> bool:
    import torch

    mine, theirs = _fold(update), _fold(variant)
    return bool(torch.allclose(mine.output(), theirs.output(), atol=1e-4, equal_nan=True))


def _loses_row_shape(update: Callable[..., Any]) -> bool:
    """True when one update breaks the (rows, 1) shape of m or l, or fails on a size mismatch (what a row max or sum
    without keepdim=True does: (rows,) broadcast against (rows, 1) makes (rows, rows), then a product fails)."""
    scores, v = _online_problem()
    try:
        state = update(SoftmaxState.empty((5,), 8), scores[:, :4], v[:4])
    except RuntimeError as err:
        return "size of tensor" in str(err) or "shape" in str(err)
    return tuple(state.m.shape) != (5, 1) or tuple(state.l.shape) != (5, 1)


@validator("06.online_update",
           hint="Keep three things per row: the largest score so far, the sum of exponentials so far, the weighted sum "
                "of values so far. When a block raises the maximum, what must happen to the two sums you already have "
                "so that they are measured from the new maximum? Keep every per-row quantity shaped (rows, 1).",
           slips={"forgetting keepdim=True in the row max or sum, so m or l loses its (rows, 1) shape":
                      _loses_row_shape,
                  "not rescaling the old sums by exp(m - m_new) when the maximum grows":
                      lambda answer: _same_as(answer, _variant_update(rescale_l=False, rescale_acc=False)),
                  "rescaling l but not acc": lambda answer: _same_as(answer, _variant_update(rescale_acc=False)),
                  "rescaling acc but not l": lambda answer: _same_as(answer, _variant_update(rescale_l=False)),
                  "exponentiating the raw scores (without subtracting the maximum they overflow)":
                      lambda answer: not bool(_fold(answer).l.isfinite().all())})
def _validate_online_update(answer: Any) -> str | None:
    """`answer` is the learner's update function; folded over every block it must give the exact softmax attention,
    with the state's shapes kept."""
    import torch

    if not callable(answer):
        return f"expected a function update(state, scores, v_block), got {type(answer).__name__}"
    scores, v = _online_problem()
    state = SoftmaxState.empty((5,), 8)
    for start in range(0, 16, 4):
        try:
            state = answer(state, scores[:, start:start + 4], v[start:start + 4])
        except Exception as err:  # a learner's bug: say what it was
            return f"calling it raised {type(err).__name__}: {err}"
        if not isinstance(state, SoftmaxState):
            return f"it must return a SoftmaxState, got {type(state).__name__}"
        for name, want in (("m", (5, 1)), ("l", (5, 1)), ("acc", (5, 8))):
            got = tuple(getattr(state, name).shape)
            if got != want:
                return f"after block {start // 4 + 1} state.{name} has shape {got}, not {want} (rows, ...)"
    if not bool(torch.isfinite(state.l).all() and torch.isfinite(state.acc).all()):
        return "the state holds inf or NaN after the last block"
    exact = scores.softmax(-1) @ v
    if not torch.allclose(state.output(), exact, atol=1e-4):
        return "folding every block in does not give softmax(scores) @ v"
    if not torch.equal(state.m, scores.amax(-1, keepdim=True)):
        return "state.m must be the running maximum of the scores seen so far"
    return None


@exercise("06.arithmetic_intensity",
          hint="Intensity is work per byte moved. The work is A.attention_flops; the bytes are what a fused kernel must "
               "read and write at the least: which four tensors of N x heads x head_dim, at how many bytes each?",
          rtol=1e-3,
          slips={"counting only Q, K and V (the output O is written too)": 4 / 3,
                 "halving the FLOPs as if causal (this pass is not causal)": 0.5,
                 "adding N x N score traffic to the bytes (a fused kernel never writes the scores)":
                     lambda expected, seq_len, heads, head_dim, dtype="bf16", causal=False:
                     attention_flops(seq_len, heads, head_dim, causal=causal) / hbm_bytes("naive", seq_len, heads,
                                                                                        head_dim, dtype),
                 "counting values instead of bytes (bf16 has 2 bytes per value)": 2.0})
def _expected_intensity(seq_len: int, heads: int, head_dim: int, dtype: str = "bf16", causal: bool = False) -> float:
    return attention_flops(seq_len, heads, head_dim, causal=causal) / hbm_bytes("sdpa", seq_len, heads, head_dim, dtype)


@exercise("06.speedup", rtol=1e-6,
          hint="How many fused calls fit in the time of one naive call? Both runs carry their time in .ms; a speed-up "
               "is bigger than 1 when the fused kernel is faster.",
          slips={"dividing the fused time by the naive time (the share of the time, not the speed-up)":
                     lambda expected, **_: 1 / expected,
                 "giving the milliseconds saved (naive - fused) instead of the ratio":
                     lambda expected, naive_ms, fused_ms: naive_ms - fused_ms,
                 "giving the percentage of time saved":
                     lambda expected, naive_ms, fused_ms: 100 * (naive_ms - fused_ms) / naive_ms})
def _expected_speedup(naive_ms: float, fused_ms: float) -> float:
    return naive_ms / fused_ms
