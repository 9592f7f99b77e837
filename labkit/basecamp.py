"""Notebook 00 (basecamp): what runs where on this machine, and a first timed generation."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

from .check import BITS_FOR_BYTES, GB_FOR_GIB, exercise
from .dtypes import bytes_per_weight, normalize_dtype
from .errors import LabkitError, require_positive, unknown
from .formatting import GIB
from .hardware import usable_memory
from .models import LoadedModel, load_hub, load_llama_cpp
from .runtimes import Generation, generate_llama_cpp, generate_transformers, render_chat

# matplotlib and huggingface_hub are imported inside the functions that use them: `import labkit` stays quick
# and works without the optional extras.

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
    usable_bytes: float = 0.0  # the memory the verdict compared against (shown, less the safety margin)


def weights_bytes(parameters: float, dtype: str) -> float:
    """Bytes the weights of a model with `parameters` weights take in `dtype`."""
    require_positive("parameters", parameters)
    return parameters * bytes_per_weight(dtype)


def what_runs_where(memory_bytes: float, dtypes: tuple[str, ...] = ("bf16", "Q8_0", "Q4_K_M"),
                    sizes_b: dict[str, float] | None = None) -> list[FitRow]:
    """For each common model size and format: weights, weights + 20 % headroom, and whether that fits
    the usable part of `memory_bytes` (the memory a device shows, less the course's safety margin:
    `labkit.hardware.usable_memory`)."""
    require_positive("memory_bytes", memory_bytes)
    usable = usable_memory(memory_bytes / GIB).bytes
    rows = []
    for name, billions in (sizes_b or COMMON_SIZES_B).items():
        for dtype in dtypes:
            w = weights_bytes(billions * 1e9, dtype)
            rows.append(FitRow(name, normalize_dtype(dtype), w, w * HEADROOM, w * HEADROOM <= usable, usable))
    return rows


def fit_table(rows: list[FitRow]) -> str:
    """A plain-text grid: models down, formats across, GiB needed and ✅ / ❌."""
    dtypes = list(dict.fromkeys(r.dtype for r in rows))
    models = list(dict.fromkeys(r.model for r in rows))
    cell = {(r.model, r.dtype): r for r in rows}
    usable = f"   (usable: {rows[0].usable_bytes / 2**30:.1f} GiB)" if rows and rows[0].usable_bytes else ""
    lines = [f"{'model':16}" + "".join(f"{d:>16}" for d in dtypes) + usable]
    for m in models:
        parts = []
        for d in dtypes:
            r = cell[(m, d)]
            parts.append(f"{r.needed_bytes / 2**30:9.1f} GiB {'✅' if r.fits else '❌'}")
        lines.append(f"{m:16}" + "".join(f"{p:>16}" for p in parts))
    return "\n".join(lines)


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


def cold_and_warm(loaded: LoadedModel, prompt: str, max_new_tokens: int = 32, warm_runs: int = 2,
                  cold: Generation | None = None) -> tuple[Generation, Generation]:
    """The first (cold) call of a runtime and a warm one, timed apart.

    A runtime's first call pays one-off costs: the OS pages the weights in from disk, thread pools
    start, kernels are picked. `cold` is that first call (pass one you already made, or it is made
    here); then `warm_runs` more calls, and the one with the median total time is returned as warm.
    """
    if isinstance(warm_runs, bool) or not isinstance(warm_runs, int) or warm_runs < 1:
        raise LabkitError(f"warm_runs must be a whole number of at least 1, got {warm_runs!r}")
    cold = cold or generate(loaded, prompt, max_new_tokens)
    warm = sorted((generate(loaded, prompt, max_new_tokens) for _ in range(warm_runs)), key=lambda g: g.total_s)
    return cold, warm[(len(warm) - 1) // 2]


def process_memory_bytes() -> int:
    """Resident memory of this Python process (what the OS counts against your RAM)."""
    return psutil.Process(os.getpid()).memory_info().rss


@exercise("00.tokens_per_second", hint="Tokens per second = generated tokens divided by the seconds they took "
          "(use the result's new_tokens and seconds, not the prompt tokens).", rtol=0.01,
          slips={"dividing the seconds by the tokens (that is seconds per token)": lambda expected, **_: 1 / expected,
                 "dividing by milliseconds instead of seconds": 1e-3})
def _tokens_per_second(new_tokens: int, seconds: float) -> float:
    return new_tokens / seconds


@exercise("00.weights_gib", hint="Weights in bytes = parameters x bytes per weight (bf16: 2 bytes, Q4_K_M: "
          "4.84 bits / 8). Divide bytes by 2**30 for GiB.", rtol=0.02,
          slips={**GB_FOR_GIB, **BITS_FOR_BYTES,
                 "using bf16's 2 bytes per weight instead of the asked type's":
                     lambda expected, parameters, **_: parameters * 2 / 2**30})
def _weights_gib(parameters: float, dtype: str) -> float:
    return weights_bytes(parameters, dtype) / 2**30


@exercise("00.decode_ceiling", hint="Every generated token reads the whole file once, so the ceiling is "
          "bandwidth (bytes/s) / bytes read per token. Use bandwidth.median (bytes/s, not GB/s) and "
          "bytes_per_token.total.", rtol=0.01,
          slips={"dividing the bytes by the bandwidth (that is seconds per token)":
                     lambda expected, bandwidth_bytes_per_s, bytes_per_token: bytes_per_token / bandwidth_bytes_per_s,
                 "using the bandwidth in GB/s where bytes per second are needed": 1e-9})
def _decode_ceiling(bandwidth_bytes_per_s: float, bytes_per_token: float) -> float:
    require_positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    require_positive("bytes_per_token", bytes_per_token)
    return bandwidth_bytes_per_s / bytes_per_token


def plot_tokens_per_second(runs: list[Generation], labels: list[str] | None = None):
    """Bar chart of end-to-end speed (new tokens / total seconds) per run, measured here."""
    import matplotlib.pyplot as plt

    if not runs:
        raise LabkitError("plot_tokens_per_second needs at least one run")
    names = labels or [r.runtime for r in runs]
    if len(names) != len(runs):
        raise LabkitError(f"got {len(names)} labels for {len(runs)} runs: give one label per run")
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.55 * len(runs)))
    speeds = [r.new_tokens / r.total_s for r in runs]
    colors = ["#2a9d8f", "#8ad1c7", "#e76f51", "#f4b09c", "#264653", "#e9c46a"]
    bars = ax.barh(names, speeds, color=[colors[i % len(colors)] for i in range(len(runs))])
    ax.bar_label(bars, labels=[f"{s:.1f} tok/s" for s in speeds], padding=4)
    ax.invert_yaxis()
    ax.set_xlabel("generated tokens per second (higher is better)")
    ax.set_title("Same model, same prompt, measured here")
    ax.set_xlim(0, max(speeds) * 1.3)
    fig.tight_layout()
    return ax


# ----------------------------------------------------------------------------- a model that answers

# A small instruction-tuned model from the Hub, in both runtimes (ungated, Apache 2.0).
INSTRUCT_HUB_ID = "Qwen/Qwen2.5-0.5B-Instruct"
INSTRUCT_GGUF = ("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf")
OFFLINE_INSTRUCT_MESSAGE = (
    "⏭  No instruction-tuned model here: this machine is offline and {what} is not in the Hub cache.\n"
    "   What you would see online: the instruct model answers the question in a sentence or two and stops\n"
    "   by itself, while the base model above continues the text like a web page. Notebook 07 teaches the\n"
    "   bundled base model to follow a format of yours with LoRA, offline. To see it here, run\n"
    "   labkit.models.precache([...]) once while online (notebook 00, 'Working offline').")


def load_instruct_model(runtime: str = "transformers", dtype: str = "fp32", device: str = "cpu") -> LoadedModel | None:
    """Qwen2.5-0.5B-Instruct in `runtime` ("transformers": the Hub's safetensors; "llama.cpp": the
    Q4_K_M GGUF Qwen publishes). Downloads when online; offline it is read from the Hub cache if it was
    pre-cached, else this prints what the learner would see and returns None (never a traceback)."""
    if runtime == "transformers":
        try:
            loaded = load_hub(INSTRUCT_HUB_ID, dtype=dtype, device=device, fallback=False)
        except LabkitError:
            print(OFFLINE_INSTRUCT_MESSAGE.format(what=INSTRUCT_HUB_ID))
            return None
    elif runtime == "llama.cpp":
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(*INSTRUCT_GGUF)
        except Exception:  # offline, not cached, or the Hub refused: all mean "not available here"
            print(OFFLINE_INSTRUCT_MESSAGE.format(what=f"{INSTRUCT_GGUF[0]}/{INSTRUCT_GGUF[1]}"))
            return None
        loaded = load_llama_cpp(path, n_ctx=2048)
    else:
        raise unknown("runtime", runtime, ("transformers", "llama.cpp"))
    print(loaded.report)
    return loaded


def chat(loaded: LoadedModel, question: str, max_new_tokens: int = 64) -> Generation:
    """Ask `question` as one user message, rendered with the model's own chat template, greedy.

    A model that ships no template (the bundled base model) gets its family's format (Gemma's), which
    is what a chat front end would send it: a base model was never trained on that format, an instruct
    model was.
    """
    if not isinstance(question, str) or not question.strip():
        raise LabkitError("question must be a non-empty string")
    require_positive("max_new_tokens", max_new_tokens)
    messages = [{"role": "user", "content": question}]
    runtime = loaded.report.runtime
    if runtime == "llama.cpp":
        llm = loaded.model
        if not llm.metadata.get("tokenizer.chat_template"):
            llm.chat_format = "gemma"  # llama-cpp-python's built-in Gemma turn format
        start = time.perf_counter()
        reply = llm.create_chat_completion(messages=messages, max_tokens=max_new_tokens, temperature=0.0)
        total = time.perf_counter() - start
        usage = reply["usage"]
        # create_chat_completion returns the reply at once: only the total time is known
        return Generation("llama.cpp", question, reply["choices"][0]["message"]["content"] or "",
                          usage["prompt_tokens"], [total] * usage["completion_tokens"], total)
    if runtime == "transformers":
        tokenizer = loaded.tokenizer
        if tokenizer is None:
            raise LabkitError("this model has no tokenizer (random weights?): chat with a real model")
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            prompt = render_chat(messages, "gemma").removeprefix("<bos>")  # the tokenizer adds <bos> itself
        return generate_transformers(loaded.model, tokenizer, prompt, max_new_tokens=max_new_tokens)
    raise unknown("runtime", runtime, ("llama.cpp", "transformers"))


def show_answers(question: str, answers: dict[str, Generation], max_new_tokens: int, width: int = 100) -> None:
    """Print each model's answer to `question` under its label, wrapped, with its length and time."""
    import textwrap

    print(f"Q: {question}\n")
    for label, g in answers.items():
        ended = "hit the token limit" if g.new_tokens >= max_new_tokens else "stopped by itself"
        print(f"── {label}  ({g.new_tokens} tokens in {g.total_s:.1f} s, {ended})")
        body = " ".join(g.text.split()) or "(nothing)"
        print(textwrap.indent(textwrap.fill(body, width), "   "), "\n")
