"""Notebook 02's widget: model size x weight format x device in, the decode-speed ceiling out.
A thin ipywidgets view over `labkit.bench.roofline_estimate` (tested on its own)."""

from __future__ import annotations

from typing import Any

from .bench import roofline_estimate
from .hardware import gpu_table
from .runtimes import GGUF_BITS_PER_WEIGHT

# ipywidgets is imported inside the function: labkit imports without the [lab] extra.


def roofline_explorer(devices: dict[str, float] | None = None):
    """A widget: model size x weight format x device -> the decode-speed ceiling (`roofline_estimate`).

    `devices` maps a label to a bandwidth in GB/s; the GPUs of datasets/gpus.json are always listed.
    """
    import ipywidgets as widgets

    table = {g["name"]: (g["bandwidth_gbps"], g["vram_gb"]) for g in gpu_table()}
    options = {**{k: (v, None) for k, v in (devices or {}).items()}, **table}
    formats = {"bf16 / fp16": 16.0, **{k: v for k, v in GGUF_BITS_PER_WEIGHT.items() if k in
                                       ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")}}
    params = widgets.FloatLogSlider(value=8, base=10, min=-0.6, max=2.6, step=0.05, description="params (B)",
                                    readout_format=".2f")
    fmt = widgets.Dropdown(options=list(formats), value="bf16 / fp16", description="weights")
    device = widgets.Dropdown(options=list(options), value=list(options)[0], description="device")
    out = widgets.HTML()

    def update(*_: Any) -> None:
        bandwidth, vram = options[device.value]
        est = roofline_estimate(params.value, formats[fmt.value], bandwidth, vram)
        fits = "" if est["fits"] is None else (" · fits in VRAM ✅" if est["fits"] else " · does NOT fit in VRAM ❌")
        out.value = (f"<b>{est['weights_gb']:.1f} GB</b> of weights read per token at {bandwidth:,.0f} GB/s → "
                     f"at most <b>{est['max_tokens_per_s']:,.1f} tokens/s</b> "
                     f"({est['ms_per_token']:.1f} ms per token){fits}")

    for w in (params, fmt, device):
        w.observe(update, names="value")
    update()
    return widgets.VBox([params, fmt, device, out])
