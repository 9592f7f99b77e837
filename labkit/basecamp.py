"""Notebook 00 (basecamp): what runs where on this machine, and a first timed generation."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

from .check import BITS_FOR_BYTES, GB_FOR_GIB, exercise
from .dtypes import bytes_per_weight, normalize_dtype
from .errors import LabkitError, require_positive, unknown
from .models import LoadedModel
from .runtimes import Generation, generate_llama_cpp, generate_transformers

# Parameter counts (billions) of sizes learners meet most, from the model cards.
COMMON_SIZES_B = {"Gemma 3 270M": 0.268, "Llama 3.2 1B": 1.24, "Llama 3.2 3B": 3.21, "Llama 3.1 8B": 8.03,
                  "Gemma 2 9B": 9.24, "Qwen2.5 14B": 14.8, "Qwen2.5 32B": 32.8, "Llama 3.3 70B": 70.6}
# Weights are not all: the KV cache, activations and the runtime need room too (notebook 03
# computes them). 20 % on top of the weights is the rule of thumb used here.
HEADROOM = 1.2


@dataclass(frozen=True)
class FitRow:
    model: str
    dtype: str
    weights_bytes: float
    needed_bytes: float
    fits: bool


def weights_bytes(parameters: float, dtype: str) -> float:
    """Bytes the weights of a model with `parameters` weights take in `dtype`."""
    require_positive("parameters", parameters)
    return parameters * bytes_per_weight(dtype)


def what_runs_where(memory_bytes: float, dtypes: tuple[str, ...] = ("bf16", "Q8_0", "Q4_K_M"),
                    sizes_b: dict[str, float] | None = None) -> list[FitRow]:
    """For each common model size and format: weights, weights + 20 % headroom, and whether it fits."""
    require_positive("memory_bytes", memory_bytes)
    rows = []
    for name, billions in (sizes_b or COMMON_SIZES_B).items():
        for dtype in dtypes:
            w = weights_bytes(billions * 1e9, dtype)
            rows.append(FitRow(name, normalize_dtype(dtype), w, w * HEADROOM, w * HEADROOM <= memory_bytes))
    return rows


def fit_table(rows: list[FitRow]) -> str:
    """A plain-text grid: models down, formats across, GiB needed and ✅ / ❌."""
    dtypes = list(dict.fromkeys(r.dtype for r in rows))
    models = list(dict.fromkeys(r.model for r in rows))
    cell = {(r.model, r.dtype): r for r in rows}
    lines = [f"{'model':16}" + "".join(f"{d:>16}" for d in dtypes)]
    for m in models:
        parts = []
        for d in dtypes:
            r = cell[(m, d)]
            parts.append(f"{r.needed_bytes / 2**30:9.1f} GiB {'✅' if r.fits else '❌'}")
        lines.append(f"{m:16}" + "".join(f"{p:>16}" for p in parts))
    return "\n".join(lines)


def fit_widget(default_gib: float | None = None):
    """A slider for memory (GiB) over `what_runs_where`; defaults to this machine's VRAM or RAM."""
    import ipywidgets as widgets

    from .hardware import detect_hardware

    if default_gib is None:
        hw = detect_hardware(check_online=False)
        default_gib = round((hw.vram_total_bytes or hw.ram_total_bytes) / 2**30, 1)
    memory = widgets.FloatSlider(value=default_gib, min=2, max=160, step=1, description="Memory GiB",
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


def generate(loaded: LoadedModel, prompt: str, max_new_tokens: int = 32) -> Generation:
    """Greedy generation through whichever runtime `loaded` came from, every token timed
    (see `labkit.runtimes` for the runtimes themselves and their servers)."""
    runtime = loaded.report.runtime
    if runtime == "llama.cpp":
        return generate_llama_cpp(loaded.model, prompt, max_new_tokens=max_new_tokens)
    if runtime == "transformers":
        if loaded.tokenizer is None:
            raise LabkitError("this model has no tokenizer (random weights?): generate text with a real model")
        return generate_transformers(loaded.model, loaded.tokenizer, prompt, max_new_tokens=max_new_tokens)
    raise unknown("runtime", runtime, ("llama.cpp", "transformers"))


def process_memory_bytes() -> int:
    """Resident memory of this Python process (what the OS counts against your RAM)."""
    return psutil.Process(os.getpid()).memory_info().rss


@exercise("00.tokens_per_second", hint="Tokens per second = generated tokens divided by the seconds they took "
          "(use the result's new_tokens and seconds, not the prompt tokens).", rtol=0.01,
          slips={"dividing the seconds by the tokens (that is seconds per token)": lambda expected, **_: 1 / expected})
def _tokens_per_second(new_tokens: int, seconds: float) -> float:
    return new_tokens / seconds


@exercise("00.weights_gib", hint="Weights in bytes = parameters x bytes per weight (bf16: 2 bytes, Q4_K_M: "
          "4.84 bits / 8). Divide bytes by 2**30 for GiB.", rtol=0.02,
          slips={**GB_FOR_GIB, **BITS_FOR_BYTES,
                 "using bf16's 2 bytes per weight instead of the asked type's":
                     lambda expected, parameters, **_: parameters * 2 / 2**30})
def _weights_gib(parameters: float, dtype: str) -> float:
    return weights_bytes(parameters, dtype) / 2**30


def plot_tokens_per_second(runs: list[Generation]):
    """Bar chart of end-to-end speed (new tokens / total seconds) per runtime, measured here."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    names = [r.runtime for r in runs]
    speeds = [r.new_tokens / r.total_s for r in runs]
    bars = ax.barh(names, speeds, color=["#2a9d8f", "#e76f51", "#264653", "#e9c46a"][: len(runs)])
    ax.bar_label(bars, labels=[f"{s:.1f} tok/s" for s in speeds], padding=4)
    ax.set_xlabel("generated tokens per second (higher is better)")
    ax.set_title("Same model, same prompt, measured here")
    ax.set_xlim(0, max(speeds) * 1.3)
    fig.tight_layout()
    return ax
