"""Notebook 06's widget: pick a sequence length, head size, heads and dtype; see the N x N memory that
naive attention needs next to a fused kernel's, estimated, and measured on this device when it fits.

The logic is `memory_report` (plain, tested in tests/test_attention_widget.py); `explorer` only draws it.
"""

from __future__ import annotations

from typing import Any

from . import attention as A
from .errors import LabkitError

# ipywidgets and torch are imported inside the functions that use them: `import labkit` stays quick and works
# without the optional extras.


def memory_report(seq_len: int, heads: int = 8, head_dim: int = 64, dtype: str = "fp32", device: Any = "cpu",
                  measure_up_to: int = 2048) -> dict:
    """Estimated and (up to `measure_up_to` tokens) measured peak extra memory of naive attention and of
    SDPA, causal, batch 1, in bytes. Measured values are None above the limit."""
    if seq_len < 1 or heads < 1 or head_dim < 1:
        raise LabkitError(f"seq_len, heads and head_dim must be positive, got {seq_len}, {heads}, {head_dim}")
    report = dict(seq_len=seq_len, heads=heads, head_dim=head_dim, dtype=dtype, device=str(device),
                  scores_bytes=A.scores_bytes(seq_len, heads, dtype),
                  naive_estimate=A.naive_peak_bytes(seq_len, heads, head_dim, dtype, masked=True),
                  fused_estimate=A.flash_peak_bytes(seq_len, heads, head_dim, dtype),
                  naive_measured=None, fused_measured=None)
    if seq_len <= measure_up_to:
        q, k, v = A.random_qkv(seq_len, heads, head_dim, dtype=dtype, device=device)
        import torch

        try:
            with torch.no_grad():
                report["naive_measured"] = A.peak_memory(lambda: A.naive_attention(q, k, v, causal=True), device)
                report["fused_measured"] = A.peak_memory(lambda: A.sdpa(q, k, v, causal=True), device)
        except torch.OutOfMemoryError:
            report["naive_measured"] = report["fused_measured"] = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return report


def format_report(r: dict) -> str:
    """The report as a small text table (MiB)."""
    def mib(x):
        return "      -" if x is None else f"{x / 2**20:10.2f}"

    lines = [f"N = {r['seq_len']:,} tokens, {r['heads']} heads x {r['head_dim']}, {r['dtype']}, causal, on {r['device']}",
             f"one N x N score matrix (all heads): {r['scores_bytes'] / 2**20:,.2f} MiB",
             "",
             "peak extra MiB        estimate    measured",
             f"naive (N x N)      {mib(r['naive_estimate'])}  {mib(r['naive_measured'])}",
             f"fused SDPA (O(N))  {mib(r['fused_estimate'])}  {mib(r['fused_measured'])}"]
    if r["naive_measured"] is None:
        lines.append("(not measured above this device's limit: the estimate only)")
    else:
        lines.append(f"naive needs {r['naive_measured'] / max(r['fused_measured'], 1):,.0f}x the fused kernel's memory")
    return "\n".join(lines)


def explorer(seq_len: int = 512, heads: int = 8, head_dim: int = 64, dtype: str = "fp32", device: Any = "cpu",
             measure_up_to: int = 2048, max_seq_len: int = 131072):
    """Sliders for N (powers of two) and heads, dropdowns for head_dim and dtype; the report below."""
    import html
    import math

    import ipywidgets as widgets

    exponent = widgets.IntSlider(value=int(math.log2(seq_len)), min=6, max=int(math.log2(max_seq_len)),
                                 description="log2 N", continuous_update=False)
    n_heads = widgets.IntSlider(value=heads, min=1, max=64, description="heads", continuous_update=False)
    dim = widgets.Dropdown(options=[32, 64, 128, 256], value=head_dim, description="head_dim")
    fmt = widgets.Dropdown(options=["fp32", "bf16", "fp16"], value=dtype, description="dtype")
    out = widgets.HTML()

    def update(*_):
        r = memory_report(2**exponent.value, n_heads.value, dim.value, fmt.value, device, measure_up_to)
        out.value = f"<pre>{html.escape(format_report(r))}</pre>"

    for w in (exponent, n_heads, dim, fmt):
        w.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([exponent, n_heads]), widgets.HBox([dim, fmt]), out])
