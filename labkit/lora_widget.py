"""The LoRA planner: rank, target modules and sequence length in, trainable parameters and training memory of
full fine-tuning / LoRA / QLoRA out. A thin ipywidgets view over `labkit.lora.lora_plan` (tested on its own)."""

from __future__ import annotations

import html

from . import lora
from .errors import unknown
from .models import list_configs

# ipywidgets is imported inside the functions that use it: `import labkit` stays quick and works without the
# optional extras.

MODULE_CHOICES = {
    "q, v (attention, the LoRA paper)": ("q_proj", "v_proj"),
    "q, k, v, o (all attention)": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all linear (attention + MLP)": "all-linear",
}


def plan_html(model: str, rank: int, modules: str, seq_len: int, gradient_checkpointing: bool = True) -> str:
    """The planner's output as an HTML <pre> table (what the widget shows)."""
    if modules not in MODULE_CHOICES:
        raise unknown("module choice", modules, MODULE_CHOICES)
    rows = lora.lora_plan(model, rank=rank, target_modules=MODULE_CHOICES[modules], seq_len=seq_len,
                          gradient_checkpointing=gradient_checkpointing)
    share = rows[1]["trainable"] / rows[0]["trainable"]
    head = (f"{model}, r={rank}, {modules}, {seq_len:,} tokens"
            f"{', gradient checkpointing' if gradient_checkpointing else ''}: "
            f"LoRA trains {share:.3%} of the parameters")
    note = lora.estimate_accuracy_note(gradient_checkpointing)
    return f"<pre>{html.escape(head)}\n\n{html.escape(lora.plan_text(rows))}\n\n{html.escape(note)}</pre>"


def planner(model: str = "llama-3.1-8b", rank: int = 16, modules: str = "all linear (attention + MLP)",
            seq_len: int = 2048):
    """Sliders for rank and sequence length, a choice of modules and model; the table updates as they move."""
    import ipywidgets as w

    controls = {
        "rank": w.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64, 128, 256], value=rank, description="rank r"),
        "seq_len": w.SelectionSlider(options=[2**k for k in range(7, 16)], value=seq_len, description="seq length"),
        "modules": w.Dropdown(options=list(MODULE_CHOICES), value=modules, description="modules"),
        "model": w.Dropdown(options=[m for m in list_configs() if m != "deepseek-v2-lite"], value=model,
                            description="model"),
        # on by default, as in TRL's SFTConfig: the setting where the committed GPU check found the estimate closest
        "gradient_checkpointing": w.Checkbox(value=True, description="gradient checkpointing"),
    }
    out = w.HTML()

    def update(*_):
        try:
            out.value = plan_html(**{k: c.value for k, c in controls.items()})
        except Exception as err:  # show the message, not a traceback, inside the widget
            out.value = f"<pre style='color:#a00'>{html.escape(str(err))}</pre>"

    for c in controls.values():
        c.observe(update, names="value")
    update()
    box = w.VBox([controls["rank"], controls["seq_len"], w.HBox([controls["modules"], controls["model"]]),
                  controls["gradient_checkpointing"], out])
    box.update, box.controls, box.output = update, controls, out
    return box
