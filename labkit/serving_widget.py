"""The capacity planner: model, card, weights, context and a latency target in; how many users decode at once
out, from the roofline estimate (`plan_capacity`) and, where one exists, beside a measurement (the
learner's own sweep on this machine, the committed GPU sweep). A thin ipywidgets view over `planner_html`."""

from __future__ import annotations

import html
from dataclasses import dataclass

from .capacity import WEIGHT_FORMATS, Device, gpu_device, plan_capacity
from .errors import unknown
from .hardware import gpu_table
from .loadgen import Slo, max_users_meeting
from .models import list_configs


@dataclass(frozen=True)
class Measured:
    """A measured sweep to show beside the estimate: which setup, and its `LoadResult.summary()` rows."""

    device: str
    model: str
    weights: str
    prompt_tokens: int  # per request in the measurement (a typical value), for the reader
    new_tokens: int
    rows: tuple[dict, ...]
    where: str  # e.g. "your sweep in section 4", "committed H100 run"


PROMPTS = tuple(2**k for k in range(4, 18))  # 16 ... 131,072 tokens
ANSWERS = tuple(2**k for k in range(3, 13))  # 8 ... 4,096 tokens


def planner_html(model: str, device: str, weights: str, prompt_tokens: int, new_tokens: int, ttft_ms: float,
                 itl_ms: float, efficiency: float, devices: dict[str, Device] | None = None,
                 measured: tuple[Measured, ...] = ()) -> str:
    """The planner's answer as HTML: the estimate's three limits, and any measurement of the same setup."""
    devices = devices or {}
    dev = devices[device] if device in devices else gpu_device(device)
    slo = Slo(ttft_ms / 1000, itl_ms / 1000)
    plan = plan_capacity(model, dev, weights, prompt_tokens, new_tokens, slo, efficiency)
    lines = [f"ESTIMATE  {plan.text()}"]
    for m in measured:
        if (m.device, m.model, m.weights) == (dev.name, model, weights):
            best = max_users_meeting(m.rows, slo)
            tried = ", ".join(str(r["users"]) for r in m.rows)
            lines.append(f"\nMEASURED  {m.where}: {best} concurrent users met {slo} at P99 "
                         f"(users tried: {tried}; prompts of about {m.prompt_tokens:,} tokens, answers of "
                         f"{m.new_tokens:,})")
    return f"<pre>{html.escape(chr(10).join(lines))}</pre>"


def capacity_planner(model: str = "llama-3.1-8b", device: str = "NVIDIA H100 80GB", weights: str = "Q4_K_M",
                     prompt_tokens: int = 1024, new_tokens: int = 256, ttft_ms: float = 1000, itl_ms: float = 100,
                     efficiency: float = 0.5, devices: dict[str, Device] | None = None,
                     measured: tuple[Measured, ...] = ()):
    """Dropdowns for model, card and weights; sliders for prompt and answer length, TTFT and ITL targets and the
    runtime's efficiency."""
    import ipywidgets as w  # optional (the lab extra): imported when the widget is built

    devices = dict(devices or {})
    names = list(devices) + [g["name"] for g in gpu_table()]
    if device not in names:
        raise unknown("device", device, names)
    if prompt_tokens not in PROMPTS:
        raise unknown("prompt_tokens", prompt_tokens, PROMPTS)
    if new_tokens not in ANSWERS:
        raise unknown("new_tokens", new_tokens, ANSWERS)
    style = {"description_width": "110px"}
    controls = {
        "model": w.Dropdown(options=list_configs(), value=model, description="model", style=style),
        "device": w.Dropdown(options=names, value=device, description="card", style=style),
        "weights": w.Dropdown(options=list(WEIGHT_FORMATS), value=weights, description="weights",
                              style=style),
        "prompt_tokens": w.SelectionSlider(options=list(PROMPTS), value=prompt_tokens, description="prompt tokens",
                                           style=style),
        "new_tokens": w.SelectionSlider(options=list(ANSWERS), value=new_tokens, description="answer tokens",
                                        style=style),
        "ttft_ms": w.FloatLogSlider(value=ttft_ms, base=10, min=1, max=4, step=0.05, description="TTFT target ms",
                                    readout_format=".0f", style=style),
        "itl_ms": w.FloatLogSlider(value=itl_ms, base=10, min=0.7, max=3, step=0.05, description="ITL target ms",
                                   readout_format=".0f", style=style),
        "efficiency": w.FloatSlider(value=efficiency, min=0.05, max=1.0, step=0.05, description="% of peak",
                                    readout_format=".0%", style=style),
    }
    out = w.HTML()

    def update(*_):
        try:
            out.value = planner_html(**{k: c.value for k, c in controls.items()}, devices=devices, measured=measured)
        except Exception as err:  # show the message, not a traceback, inside the widget
            out.value = f"<pre style='color:#a00'>{html.escape(str(err))}</pre>"

    for c in controls.values():
        c.observe(update, names="value")
    update()
    box = w.VBox([w.HBox([controls["model"], controls["device"], controls["weights"]]), controls["prompt_tokens"],
                  controls["new_tokens"], controls["ttft_ms"], controls["itl_ms"], controls["efficiency"], out])
    box.update, box.controls, box.output = update, controls, out
    return box
