"""Notebook 01's widget: the model picker. Task, VRAM, licence, weight format and context in; the catalog models
that fit, best first, each with its reason. A thin ipywidgets view over `labkit.catalog.recommend`."""

from __future__ import annotations

from .catalog import LICENCE_FILTERS, TASKS, Recommendation, recommend
from .formatting import table

# ipywidgets is imported inside the function: labkit imports without the [lab] extra.


def recommendations_html(recs: list[Recommendation], task: str = "", vram_gb: float | None = None) -> str:
    """An HTML table of recommendations (what the picker widget shows)."""
    if not recs:
        where = f" for '{task}' in {vram_gb:g} GiB" if vram_gb is not None else ""
        return f"<p><b>No catalog model fits{where}.</b> Try a smaller quantization, a shorter context or another licence filter.</p>"
    return table([r.as_row() for r in recs], "html")


def picker(task: str = "general", vram_gb: float = 12.0, licence: str = "any", quant: str = "Q4_K_M"):
    """The model picker: task, VRAM, licence and quantization controls over `recommend()`."""
    import ipywidgets as widgets

    task_w = widgets.Dropdown(options=TASKS, value=task, description="Task")
    vram_w = widgets.FloatSlider(value=vram_gb, min=2, max=96, step=1, description="VRAM (GiB)",
                                 continuous_update=False)
    licence_w = widgets.Dropdown(options=[(f"{k}: {v}", k) for k, v in LICENCE_FILTERS.items()], value=licence,
                                 description="Licence", layout=widgets.Layout(width="520px"))
    quant_w = widgets.Dropdown(options=["bf16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M"], value=quant,
                               description="Weights")
    context_w = widgets.Dropdown(options=[2048, 4096, 8192, 32768], value=4096, description="Context")
    out = widgets.HTML()

    def update(_=None):
        recs = recommend(task_w.value, vram_w.value, quant=quant_w.value, context=context_w.value,
                         licence=licence_w.value)
        out.value = recommendations_html(recs, task_w.value, vram_w.value)

    for w in (task_w, vram_w, licence_w, quant_w, context_w):
        w.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([task_w, vram_w]), widgets.HBox([quant_w, context_w]), licence_w, out])
