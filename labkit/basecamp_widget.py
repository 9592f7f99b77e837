"""Notebook 00's widget: slide the memory a device shows and see which common model sizes and formats fit.
A thin ipywidgets view over `labkit.basecamp.what_runs_where` and `fit_table` (tested on their own)."""

from __future__ import annotations

from .basecamp import fit_table, what_runs_where
from .hardware import detect_hardware

# ipywidgets is imported inside the function: labkit imports without the [lab] extra.


def fit_explorer(default_gib: float | None = None):
    """A slider for memory (GiB) over `what_runs_where`; defaults to this machine's VRAM or RAM."""
    import ipywidgets as widgets

    if default_gib is None:
        hw = detect_hardware(check_online=False)
        default_gib = round((hw.vram_total_bytes or hw.ram_total_bytes) / 2**30, 1)
    memory = widgets.FloatSlider(value=default_gib, min=2, max=160, step=1, description="Memory shown, GiB",
                                 continuous_update=True, style={"description_width": "initial"})
    formats = widgets.SelectMultiple(options=["fp32", "bf16", "Q8_0", "Q6_K", "Q4_K_M", "Q2_K"],
                                     value=("bf16", "Q8_0", "Q4_K_M"), description="Formats")
    out = widgets.HTML()

    def update(*_):
        table = fit_table(what_runs_where(memory.value * 2**30, tuple(formats.value) or ("bf16",)))
        out.value = f"<pre style='font-size:12px'>{table}</pre>"

    memory.observe(update, "value")
    formats.observe(update, "value")
    update()
    return widgets.VBox([widgets.HBox([memory, formats]), out])
