"""Notebook 04's widget: pick a quantization level, a model, a GPU and a context; see the size, whether it fits
and the quality measured at that level. A thin ipywidgets view over `labkit.quant.ladder_choice`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .hardware import gpu_table
from .quant import ladder_choice

# ipywidgets is imported inside the function: labkit imports without the [lab] extra.


def ladder_explorer(rows: Sequence[dict], models: Sequence[str] = ("llama-3.1-8b", "mistral-7b-v0.3", "qwen2.5-7b",
                                                                     "gemma-2-9b", "llama-3.1-70b")):
    """Pick a level, a model and a GPU: size, fit and the measured quality (a view over `ladder_choice`)."""
    import ipywidgets as widgets

    level = widgets.Dropdown(options=[r["level"] for r in rows], value=rows[min(4, len(rows) - 1)]["level"],
                             description="level")
    model = widgets.Dropdown(options=list(models), value=models[0], description="model")
    gpu = widgets.Dropdown(options=[g["name"] for g in gpu_table()], value="NVIDIA RTX 4090", description="GPU")
    context = widgets.IntSlider(value=8192, min=1024, max=131072, step=1024, description="context")
    out = widgets.HTML()

    def update(*_: Any) -> None:
        c = ladder_choice(rows, level.value, model.value, gpu.value, context.value)
        verdict = "fits ✅" if c["fits"] else "does NOT fit ❌"
        out.value = (f"<div class='ladder-result'><b>{c['model']} at {c['level']}</b>: weights {c['weights_gib']:.1f} GiB, "
                     f"{c['needed_gib']:.1f} GiB with {context.value:,} tokens of context → <b>{verdict}</b> on "
                     f"{c['gpu']}<br>Measured on Gemma 3 270M at this level: KLD <b>{c['kld']:.4f}</b>, "
                     f"perplexity {c['ppl']:.2f}, same top token {100 * c['top1_agreement']:.1f}% of the time</div>")

    for w in (level, model, gpu, context):
        w.observe(update, names="value")
    update()
    return widgets.VBox([level, model, gpu, context, out])
