"""A FlashAttention forward kernel in Triton, written for the course (notebook 06 reads it line by line).

One program instance computes BLOCK_M query rows of one (batch, head). It loads its Q tile once, then
walks over K and V in BLOCK_N-row tiles, keeping the online-softmax state (running max m, running sum
l, unnormalised output acc) in registers. Scores live only as a BLOCK_M x BLOCK_N tile on chip; nothing
N x N ever reaches HBM. This is FlashAttention-2's forward loop (Dao 2023, arXiv:2307.08691): the outer
loop is over queries (so instances never share work), and the division by l happens once at the end.

Two details from the papers and Triton's fused-attention tutorial that make it fast:
* exp2 instead of exp: fold log2(e) into the softmax scale once, since exp(x) = 2^(x log2 e);
* causal attention splits the key loop in two: tiles entirely below the diagonal need no mask, and
  only the tiles on the diagonal pay for the comparisons. Tiles above it are never visited.

Needs an NVIDIA GPU and Triton (bf16 or fp16, head_dim 16 to 256, a power of two). Use it through
`labkit.attention.triton_attention`, which checks inputs and says what to use elsewhere.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .attention_inputs import check_qkv
from .errors import LabkitError

LOG2_E = 1.4426950408889634

if os.environ.get("TRITON_INTERPRET") == "1":  # the CPU interpreter: one small config, no tuning
    CONFIGS = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
else:  # BLOCK_M must be a multiple of BLOCK_N (the causal split relies on it)
    CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4)]
    ]


@triton.jit
def _attend_tiles(acc, l_i, m_i, q, k_tile_ptrs, v_tile_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                  start, stop, n_keys, qk_scale,
                  BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """Fold the key/value tiles start..stop into (acc, l_i, m_i). MASKED tiles check the key bound
    and, when CAUSAL, the diagonal; the others need no comparison at all."""
    k_tile_ptrs += start * stride_kn
    v_tile_ptrs += start * stride_vn
    for start_n in range(start, stop, BLOCK_N):
        if MASKED:
            in_range = (start_n + offs_n) < n_keys
            k = tl.load(k_tile_ptrs, mask=in_range[None, :], other=0.0)
        else:
            k = tl.load(k_tile_ptrs)
        qk = tl.dot(q, k)  # (BLOCK_M, BLOCK_N) scores in fp32, on chip
        if MASKED:
            keep = in_range[None, :]
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= (start_n + offs_n)[None, :])
            qk = tl.where(keep, qk, -1.0e6)  # large negative, not -inf: exp2 gives 0 and no NaN appears
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)  # running max, in log2 units
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)  # how much the old max was too small: rescale what we had
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if MASKED:
            v = tl.load(v_tile_ptrs, mask=in_range[:, None], other=0.0)
        else:
            v = tl.load(v_tile_ptrs)
        acc = tl.dot(p.to(v.dtype), v, acc)  # acc += P V, on the tensor cores, accumulating in fp32
        m_i = m_new
        k_tile_ptrs += BLOCK_N * stride_kn
        v_tile_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.autotune(configs=CONFIGS, key=["N_Q", "N_K", "HEAD_DIM", "CAUSAL"])
@triton.jit
def _flash_forward_kernel(Q, K, V, Out, qk_scale,
                          stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
                          HEADS, GROUP, N_Q, N_K,
                          HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # 1. which tile am I? program_id(0): a block of query rows; program_id(1): one (batch, head)
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = bh // HEADS, bh % HEADS
    kv_h = h // GROUP  # grouped-query attention: GROUP query heads share one K/V head
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)

    # 2. load my Q tile once; it stays in registers for the whole key loop
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=offs_m[:, None] < N_Q, other=0.0)
    # K is read as K^T tiles (HEAD_DIM x BLOCK_N) so that tl.dot(q, k) gives Q K^T directly
    k_ptrs = K + b * stride_kb + kv_h * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None]
    v_ptrs = V + b * stride_vb + kv_h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]

    # 3. the online-softmax state, in fp32 registers
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # 4. the key loop: tiles that need no mask first, then the ones that do
    if CAUSAL:
        unmasked_stop = tl.minimum(start_m, N_K) // BLOCK_N * BLOCK_N  # tiles wholly below the diagonal
        masked_stop = tl.minimum(start_m + BLOCK_M, N_K)  # the diagonal tiles; nothing above is visited
    else:
        unmasked_stop = N_K // BLOCK_N * BLOCK_N
        masked_stop = N_K  # the last, partial tile (if N_K is not a multiple of BLOCK_N)
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                                  0, unmasked_stop, N_K, qk_scale, BLOCK_N, False, CAUSAL)
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                                  unmasked_stop, masked_stop, N_K, qk_scale, BLOCK_N, True, CAUSAL)

    # 5. normalise once, write my tile of O
    acc = acc / l_i[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :]
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=offs_m[:, None] < N_Q)


def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                            scale: float | None = None) -> torch.Tensor:
    """softmax(Q K^T * scale) V by the Triton kernel. q: (batch, heads, n_q, d); k, v: (batch, kv_heads, n_k, d)."""
    s = check_qkv(q, k, v)
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise LabkitError(f"the Triton kernel takes bf16 or fp16 inputs, got {str(q.dtype).removeprefix('torch.')}")
    if s.head_dim not in (16, 32, 64, 128, 256):
        raise LabkitError(f"the Triton kernel takes head_dim 16, 32, 64, 128 or 256, got {s.head_dim}")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q)
    scale = 1 / math.sqrt(s.head_dim) if scale is None else scale

    def grid(meta):
        return (triton.cdiv(s.n_q, meta["BLOCK_M"]), s.batch * s.heads)

    _flash_forward_kernel[grid](
        q, k, v, out, scale * LOG2_E,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        s.heads, s.group, s.n_q, s.n_k,
        HEAD_DIM=s.head_dim, CAUSAL=causal,
    )
    return out
