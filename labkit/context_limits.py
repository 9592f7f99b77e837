"""The longest context that fits a card, and the runtime settings that decide it (notebook 05, section 10).

A context costs cache memory for every token, so the longest context a card can hold is what is left after the
weights and the runtime's own buffers, divided by the cache's bytes per token, capped by the model's own window.
The two runtimes expose the same decision as flags:

* llama.cpp (`llama-server`, `llama-cli`): `-c N` allocates the cache for N tokens up front; `--cache-type-k` /
  `--cache-type-v` store it as f16, q8_0 or q4_0 (8.5 and 4.5 bits per value); a quantized V cache needs flash
  attention, `-fa on` (notebook 06); `-ngl` is how many layers go to the GPU (notebook 04).
* vLLM (`vllm serve`): `--gpu-memory-utilization` is the share of the card it takes (0.9 by default), out of which it
  keeps the weights and the activation peak it measures at start-up, and turns all the rest into cache blocks;
  `--kv-cache-dtype fp8` halves the cache; `--max-model-len` is the longest sequence it accepts, and vLLM refuses to
  start when one sequence of that length does not fit the cache.

`longest_context` computes it for a model (a shipped config), a weight format and a card (a gpus.json name, a number
of GiB, or this machine), from labkit.vram's estimates: the same ones every fit verdict of the course uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import vram
from .architecture import architecture
from .errors import LabkitError, unknown
from .formatting import GIB
from .hardware import detect_hardware, usable_memory

RUNTIMES = ("llama.cpp", "vllm")
# llama.cpp's cache types and the names labkit.vram knows them by
LLAMA_CPP_CACHE_TYPES = {"f16": "fp16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
# vLLM's --kv-cache-dtype values ("auto": the model's own dtype, bf16 for the shipped configs)
VLLM_KV_DTYPES = {"auto": "bf16", "fp8": "fp8"}
VLLM_DEFAULT_UTILIZATION = 0.9
# vLLM profiles one forward pass of --max-num-batched-tokens tokens at start-up (8192 in its server's default,
# vLLM 0.8+); labkit estimates that pass's activations with its transformers prefill model, an approximation:
# vLLM prints the measured figure ("activation peak") in its start-up log, compare with it
VLLM_PROFILE_TOKENS = 8192


@dataclass(frozen=True)
class ContextFit:
    """What `longest_context` found, and the command line that asks for it."""

    model: str
    runtime: str
    weights_dtype: str
    cache_type: str
    where: str
    budget_bytes: float  # what the runtime may use: usable memory (llama.cpp) or the utilisation's share (vLLM)
    fixed_bytes: float  # weights, buffers and overhead, before any cache
    longest_tokens: int  # 0: even the weights do not fit
    window: int  # the model's own context window (max_position_embeddings)
    command: str

    @property
    def limited_by(self) -> str:
        if self.longest_tokens == 0:
            return "the weights do not fit"
        return "the model's context window" if self.longest_tokens >= self.window else "memory"

    @property
    def cache_bytes(self) -> float:
        """The cache at the longest context."""
        kv = vram_kv_dtype(self.runtime, self.cache_type)
        return vram.kv_cache_bytes(self.model, self.longest_tokens, kv_dtype=kv) if self.longest_tokens else 0.0

    def row(self) -> dict:
        return {"runtime": self.runtime, "weights": self.weights_dtype, "cache": self.cache_type,
                "longest context": f"{self.longest_tokens:,}", "limited by": self.limited_by,
                "cache GiB": round(self.cache_bytes / GIB, 2), "fixed GiB": round(self.fixed_bytes / GIB, 2)}

    def __str__(self) -> str:
        if not self.longest_tokens:
            return (f"{self.model} in {self.weights_dtype} does not fit {self.where} with {self.runtime}: "
                    f"{self.fixed_bytes / GIB:.1f} GiB before any cache, {self.budget_bytes / GIB:.1f} GiB to use")
        return (f"{self.model} ({self.weights_dtype}, {self.runtime}, cache {self.cache_type}) on {self.where}: "
                f"{self.longest_tokens:,} tokens, limited by {self.limited_by}\n    {self.command}")


def vram_kv_dtype(runtime: str, cache_type: str) -> str:
    """labkit.vram's name for a runtime's cache type ("q8_0" -> "Q8_0", vLLM's "auto" -> "bf16")."""
    table = LLAMA_CPP_CACHE_TYPES if runtime == "llama.cpp" else VLLM_KV_DTYPES
    if cache_type not in table:
        raise unknown(f"{runtime} cache type", cache_type, table)
    return table[cache_type]


def _largest(fits, high: int) -> int:
    """The largest n in [1, high] with fits(n) (fits is monotonic), or 0 when even 1 does not fit."""
    if not fits(1):
        return 0
    low = 1
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def longest_context(model: str, device_or_gb: Any = None, weights_dtype: str = "Q4_K_M", cache_type: str = "f16",
                    runtime: str = "llama.cpp", gpu_memory_utilization: float = VLLM_DEFAULT_UTILIZATION,
                    model_file: str | None = None) -> ContextFit:
    """The longest context (one sequence) `model` can hold on `device_or_gb`, and the command line that asks for it.

    - llama.cpp: the largest `-c` whose labkit.vram estimate (weights, cache, compute buffer, runtime) fits the
      usable memory (`labkit.hardware.usable_memory`, the course's one rule); `weights_dtype` a GGUF type.
    - vLLM: `gpu_memory_utilization` x the card, less the weights and the start-up activation peak, in cache; the
      longest `--max-model-len` whose cache fits it. `weights_dtype` "bf16" (or "fp16"); `cache_type` "auto" / "fp8".
    In both, capped by the model's own context window. `device_or_gb`: a GPU name, GiB, or None for this machine.
    """
    if runtime not in RUNTIMES:
        raise unknown("runtime", runtime, RUNTIMES)
    a = architecture(model)
    window = a.max_position or 131072
    kv = vram_kv_dtype(runtime, cache_type)
    usable = usable_memory(device_or_gb)
    device = "cpu" if device_or_gb is None and detect_hardware(check_online=False).device == "cpu" else "cuda"
    if runtime == "llama.cpp":
        def total(tokens: int) -> float:
            return vram.estimate_inference(model, weights_dtype, context=tokens, runtime="llama.cpp", kv_dtype=kv,
                                           device=device).total

        budget = usable.bytes
        fixed = total(1) - vram.kv_cache_bytes(model, 1, kv_dtype=kv)
        longest = _largest(lambda n: total(n) <= budget, window)
        file = model_file or f"{a.name}-{weights_dtype}.gguf"
        gpu_layers = "-ngl 99 " if device == "cuda" else ""  # every layer on the GPU (notebook 04 when they do not fit)
        command = (f"llama-server -m {file} -c {longest} {gpu_layers}-fa on --cache-type-k {cache_type} "
                   f"--cache-type-v {cache_type}")
    else:
        if not 0 < gpu_memory_utilization <= 1:
            raise LabkitError(f"gpu_memory_utilization must be a fraction between 0 and 1, got {gpu_memory_utilization!r}")
        if weights_dtype not in ("bf16", "fp16"):
            raise unknown("vLLM weights in this estimate", weights_dtype, ("bf16", "fp16"))
        profile = vram.estimate_inference(model, weights_dtype, context=VLLM_PROFILE_TOKENS, runtime="transformers",
                                          device="cuda")
        # vLLM's share is of what the card shows, not of labkit's usable memory (it keeps its own margin: 1 - util)
        budget = gpu_memory_utilization * usable.shown_bytes
        fixed = profile.weights + profile.activations + profile.overhead
        longest = _largest(lambda n: fixed + vram.kv_cache_bytes(model, n, kv_dtype=kv) <= budget, window)
        command = (f"vllm serve {model_file or a.name} --max-model-len {longest} --kv-cache-dtype {cache_type} "
                   f"--gpu-memory-utilization {gpu_memory_utilization:g}")
    return ContextFit(model=a.name, runtime=runtime, weights_dtype=weights_dtype, cache_type=cache_type,
                      where=usable.where, budget_bytes=budget, fixed_bytes=fixed, longest_tokens=longest,
                      window=window, command=command)


def context_table(model: str, device_or_gb: Any = None, weights_dtype: str = "Q4_K_M") -> list[ContextFit]:
    """The longest context of `model` with each llama.cpp cache type (f16, q8_0, q4_0), and with vLLM in bf16
    (auto and fp8 caches) when the device is a GPU."""
    fits = [longest_context(model, device_or_gb, weights_dtype, cache, "llama.cpp") for cache in LLAMA_CPP_CACHE_TYPES]
    on_gpu = device_or_gb is not None or detect_hardware(check_online=False).device == "cuda"
    if on_gpu:
        fits += [longest_context(model, device_or_gb, "bf16", cache, "vllm") for cache in VLLM_KV_DTYPES]
    return fits
