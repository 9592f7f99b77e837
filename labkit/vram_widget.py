"""The VRAM calculator: a plain function (`calculate`), its HTML and matplotlib views, and a thin
ipywidgets front end (`calculator`).

    from labkit import vram_widget
    vram_widget.calculator()                       # in a notebook
    calc = vram_widget.calculate("llama-3.1-8b", "nf4", context=8192)
    print(calc)                                    # anywhere
"""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass, field
from typing import Any

from . import vram
from .architecture import architecture, weight_check
from .dtypes import normalize_dtype
from .errors import unknown
from .formatting import GIB
from .hardware import detect_hardware, find_gpu, usable_memory
from .models import list_configs

# ipywidgets and matplotlib are imported inside the functions that use them: `import labkit` stays quick and
# works without the optional extras.

WORKLOADS = ("inference", *vram.TRAINING_METHODS)  # what the calculator sizes: running, or one way of training
COLORS = {"weights": "#4C72B0", "kv_cache": "#DD8452", "gradients": "#8172B3", "optimizer_states": "#937860",
          "activations": "#55A868", "overhead": "#8C8C8C"}
LABELS = {"weights": "weights", "kv_cache": "KV cache", "gradients": "gradients", "optimizer_states": "optimizer",
          "activations": "activations", "overhead": "overhead"}


@dataclass
class GpuRow:
    name: str
    vram_gib: float
    fits: bool
    headroom_gib: float


@dataclass
class Calculation:
    """What the calculator shows: the estimate per GPU and, for each GPU, whether it fits."""

    estimate: vram.MemoryEstimate
    n_gpus: int
    rows: list[GpuRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    beyond_window: str = ""  # the warning when the context is beyond the model's window, else ""

    def __str__(self) -> str:
        per = " per GPU" if self.n_gpus > 1 else ""
        band = f" ±{self.estimate.band:.0%}" if self.estimate.band else ""
        lines = [f"{self.estimate.label}: {self.estimate.total / GIB:.1f} GiB{band}{per}"]
        if self.beyond_window:
            lines.insert(0, self.beyond_window)
        lines += [f"  {p:<17}{v / GIB:8.2f} GiB" for p, v in self.estimate.parts().items()]
        lines += [f"  {'✅' if r.fits else '❌'} {r.name:<24}{r.vram_gib:6.0f} GiB  ({r.headroom_gib:+.1f})"
                  for r in self.rows]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def your_device() -> tuple[str, float] | None:
    """(name, usable GiB) of this machine's GPU, or of its RAM when there is no GPU: the total it shows,
    less the safety margin every fit verdict keeps (labkit.hardware.usable_memory)."""
    hw = detect_hardware(check_online=False)
    if hw.device == "cuda" and hw.vram_total_bytes:
        return f"yours: {hw.gpu_name}", usable_memory(hw.vram_total_bytes / GIB).bytes / GIB
    return "yours: CPU RAM", usable_memory(hw.ram_total_bytes / GIB).bytes / GIB


def calculate(model: Any = "llama-3.1-8b", dtype: str = "bf16", context: int = 4096, batch: int = 1,
              method: str = "inference", n_gpus: int = 1, gpus: tuple[str, ...] = vram.COMMON_GPUS,
              include_yours: bool = True, gradient_checkpointing: bool = True) -> Calculation:
    """The estimate for one setting (per GPU when split over `n_gpus`), against a row of GPUs.

    model: anything `labkit.architecture.architecture` reads: a shipped name, the path of a config.json, a
    Hub id (from your local Hugging Face cache when offline), a config dict or a transformers config.
    method: "inference" (generate `context` tokens' worth), or training one step on `batch` x
    `context` tokens: "full" (mixed-precision AdamW), "lora", "qlora" (an NF4 base).
    gradient_checkpointing: training only; keep each layer's input and recompute the rest during
    the backward pass (on by default, as fine-tuning recipes for large models run).
    """
    if method not in WORKLOADS:
        raise unknown("method", method, WORKLOADS)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if method == "inference":
            est = vram.estimate_inference(model, dtype, context=context, batch=batch)
        else:
            train_dtype = normalize_dtype(dtype)
            if train_dtype not in vram.FLOAT_DTYPES:
                notes.append(f"{method} trains with bf16 compute; the dtype {dtype} applies to inference only")
                train_dtype = "bf16"
            est = vram.estimate_training(model, method, dtype=train_dtype, seq_len=context, batch=batch,
                                         gradient_checkpointing=gradient_checkpointing)
            notes.append(f"gradient checkpointing {'on' if gradient_checkpointing else 'off'}")
    beyond = vram.window_warning(model, context) if est.inputs.get("beyond_max_context") else ""
    notes += [str(w.message) for w in caught if str(w.message) != beyond]
    check = weight_check(model)
    if not check.agree:  # a model type without a formula, or one the formula misses parts of
        notes.append(str(check))
    if est.band:  # no formula: the range the true peak was found in on held-out families
        notes.insert(0, f"band {est.band_text}")
    est = vram.split_tensor_parallel(est, n_gpus)
    rows = []
    for g in gpus:
        info = find_gpu(g)
        have = usable_memory(info).bytes / GIB  # what CUDA shows, less the safety margin
        rows.append(GpuRow(info["name"].removeprefix("NVIDIA "), have, est.total <= have * GIB,
                           have - est.total / GIB))
    if include_yours:
        mine = your_device()
        if mine:
            rows.append(GpuRow(mine[0], mine[1], est.total <= mine[1] * GIB, mine[1] - est.total / GIB))
    return Calculation(est, n_gpus, rows, notes, beyond)


def bars_html(calc: Calculation) -> str:
    """A stacked bar of the estimate's parts against each GPU's memory, as HTML (fast to redraw)."""
    parts = calc.estimate.parts()
    need = calc.estimate.total / GIB
    scale = max([need, *(r.vram_gib for r in calc.rows)]) or 1.0
    px = 420 / scale
    seg = "".join(
        f'<div title="{LABELS[p]}: {v / GIB:.2f} GiB" style="width:{v / GIB * px:.1f}px;'
        f'background:{COLORS[p]};height:14px"></div>' for p, v in parts.items() if v > 0)
    legend = " ".join(f'<span style="color:{COLORS[p]}">■</span> {LABELS[p]} {v / GIB:.2f}' for p, v in parts.items())
    per = f" per GPU (x{calc.n_gpus}, tensor parallel)" if calc.n_gpus > 1 else ""
    band = f" ±{calc.estimate.band:.0%}" if calc.estimate.band else ""
    head = (f"<div><b>{html.escape(calc.estimate.label)}</b>: <b>{need:.1f} GiB{band}</b>{per}<br>"
            f"<span style='font-size:90%'>{legend} GiB</span></div>")
    rows = []
    for r in calc.rows:
        mark = "✅" if r.fits else "❌"
        rows.append(
            "<tr>"
            f"<td style='text-align:left;white-space:nowrap'>{mark} {html.escape(r.name)}</td>"
            f"<td style='text-align:right'>{r.vram_gib:.0f} GiB</td>"
            f"<td style='text-align:left'><div style='position:relative;width:{r.vram_gib * px:.1f}px;height:14px;"
            f"border:1px solid #555;background:#f4f4f4'><div style='display:flex;position:absolute;top:0;left:0'>"
            f"{seg}</div></div></td>"
            f"<td style='text-align:right'>{r.headroom_gib:+.1f}</td></tr>")
    notes = "".join(f"<div style='color:#a60;font-size:90%'>{html.escape(n)}</div>" for n in calc.notes)
    if calc.beyond_window:  # a banner above everything: the learner must not miss it
        head = (f"<div class='labkit-beyond-window' style='background:#fde8e8;color:#a00;border:1px solid #a00;"
                f"padding:4px 8px;margin-bottom:4px;font-weight:bold'>{html.escape(calc.beyond_window)}</div>{head}")
    return (f"{head}<table style='border-collapse:collapse'><tr><th>GPU</th><th>usable</th><th></th>"
            f"<th>headroom</th></tr>{''.join(rows)}</table>{notes}")


def plot_breakdown(estimates: dict[str, vram.MemoryEstimate], ax=None, title: str = "Memory by part"):
    """Stacked bars (GiB) for several estimates or measurements, one bar each."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots()
    labels = list(estimates)
    bottom = [0.0] * len(labels)
    for part in vram.MemoryEstimate.PARTS:
        values = [getattr(estimates[k], part) / GIB for k in labels]
        if any(values):
            ax.bar(labels, values, bottom=bottom, color=COLORS[part], label=LABELS[part])
            bottom = [b + v for b, v in zip(bottom, values)]
    for i, total in enumerate(bottom):
        ax.text(i, total, f"{total:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("GiB")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelrotation=15)
    return ax.figure


def plot_context_sweep(model: str, dtype: str = "bf16", contexts: tuple[int, ...] = (512, 2048, 8192, 32768, 131072),
                       ax=None):
    """Weights, KV cache and the whole estimate as the context grows (log scale)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ests = [vram.estimate_inference(model, dtype, context=n) for n in contexts]
    ax.plot(contexts, [e.weights / GIB for e in ests], "o-", color=COLORS["weights"], label="weights")
    ax.plot(contexts, [e.kv_cache / GIB for e in ests], "o-", color=COLORS["kv_cache"], label="KV cache")
    ax.plot(contexts, [e.activations / GIB for e in ests], "o-", color=COLORS["activations"], label="activations")
    ax.plot(contexts, [e.total / GIB for e in ests], "k--", label="total (estimate)")
    ax.set_xscale("log", base=2)
    window = architecture(model).max_position
    if window and window < max(contexts):  # grey out what the model cannot read
        ax.axvspan(window, max(contexts), color="0.85", alpha=0.6, zorder=0,
                   label=f"beyond its {window:,}-token window")
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("GiB")
    ax.set_title(f"{model} ({dtype}): what grows with the context")
    ax.legend(fontsize=8)
    return ax.figure


def calculator(model: Any = "llama-3.1-8b", dtype: str = "bf16", context: int = 4096, batch: int = 1,
               method: str = "inference", n_gpus: int = 1, gradient_checkpointing: bool = True):
    """The interactive calculator (ipywidgets): pick a model, dtype, context, batch, method and GPUs.

    `model` may be a shipped name or anything `labkit.architecture.architecture` reads (a config.json path,
    a Hub id, a config dict); the "your model" box takes a path or a Hub id too.
    """
    import ipywidgets as w

    configs = list_configs()
    for name in configs:  # read every config once now, so that each update stays well under 50 ms (the
        architecture(name)  # first estimate of each model also builds it on the meta device once, ~0.3 s)
    options = [(n, n) for n in configs]
    if not (isinstance(model, str) and model in configs):
        options.insert(0, (f"yours: {architecture(model).name}", model))
    dtypes = ["fp32", "fp16", "bf16", "int8", "nf4", *vram.GGUF_DTYPES]
    controls = {
        "model": w.Dropdown(options=options, value=model, description="model"),
        "dtype": w.Dropdown(options=dtypes, value=normalize_dtype(dtype), description="dtype"),
        "context": w.SelectionSlider(options=[2**k for k in range(7, 18)], value=context, description="context"),
        "batch": w.IntSlider(value=batch, min=1, max=64, description="batch"),
        "method": w.ToggleButtons(options=list(WORKLOADS), value=method, description="method"),
        "n_gpus": w.IntSlider(value=n_gpus, min=1, max=8, description="GPUs"),
        "gradient_checkpointing": w.Checkbox(value=gradient_checkpointing, description="gradient checkpointing",
                                             tooltip="training: recompute each layer in the backward pass"),
    }
    own = w.Text(placeholder="a config.json path or a Hub id, then Enter", description="your model",
                 continuous_update=False)
    out = w.HTML()

    def add_own(*_):
        text = own.value.strip()
        if not text:
            return
        try:
            label = f"yours: {architecture(text).name}"
        except Exception as err:  # the LabkitError says what is wrong; no traceback in the widget
            out.value = f"<pre style='color:#a00'>{html.escape(str(err))}</pre>"
            return
        choice = controls["model"]
        choice.options = [(label, text), *[o for o in choice.options if o[1] != text]]
        choice.value = text

    def update(*_):
        try:
            calc = calculate(**{k: c.value for k, c in controls.items()})
            out.value = bars_html(calc)
        except Exception as err:  # show the message instead of a traceback in the widget
            out.value = f"<pre style='color:#a00'>{html.escape(str(err))}</pre>"

    for c in controls.values():
        c.observe(update, names="value")
    own.observe(add_own, names="value")
    update()
    box = w.VBox([w.HBox([controls["model"], controls["dtype"]]), own, controls["context"],
                  w.HBox([controls["batch"], controls["n_gpus"]]),
                  w.HBox([controls["method"], controls["gradient_checkpointing"]]), out])
    box.update = update  # for tests and for a manual refresh
    box.controls = controls
    box.own_model = own
    box.output = out
    return box


def time_update(**settings: Any) -> float:
    """Seconds one calculator update takes (estimate + HTML), the best of 5 (the widget needs < 0.05)."""
    import time

    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        bars_html(calculate(**settings))
        best = min(best, time.perf_counter() - start)
    return best
