"""The shape of an attention problem, checked: what labkit.attention and labkit.attention_triton both take.

Shapes follow SDPA: q is (batch, heads, n_q, head_dim); k and v are (batch, kv_heads, n_k, head_dim), with
heads a multiple of kv_heads (grouped-query attention). `check_qkv` returns the `Shape` or raises a
LabkitError that says what does not match.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LabkitError


@dataclass(frozen=True)
class Shape:
    batch: int
    heads: int
    kv_heads: int
    n_q: int
    n_k: int
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 = plain multi-head attention)."""
        return self.heads // self.kv_heads


def check_qkv(q, k, v) -> Shape:
    """The shape of an attention problem, or a LabkitError saying what does not match."""
    import torch  # here, not at the top: labkit imports without torch

    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise LabkitError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise LabkitError(f"{name} must have 4 dimensions (batch, heads, tokens, head_dim), got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise LabkitError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    b, h, n_q, d = q.shape
    _, h_kv, n_k, d_k = k.shape
    if k.shape[0] != b:
        raise LabkitError(f"q and k must have the same batch size, got {b} and {k.shape[0]}")
    if d_k != d:
        raise LabkitError(f"q and k must have the same head_dim, got {d} and {d_k}")
    if h_kv == 0 or h % h_kv:
        raise LabkitError(f"q's heads ({h}) must be a multiple of k/v's heads ({h_kv}) (grouped-query attention)")
    if min(n_q, n_k, d) == 0:
        raise LabkitError(f"empty attention: n_q={n_q}, n_k={n_k}, head_dim={d}")
    if not (q.dtype == k.dtype == v.dtype):
        raise LabkitError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise LabkitError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    return Shape(b, h, h_kv, n_q, n_k, d)
