"""FlashAttention on your own machine: how to switch it on in each runtime, what hardware each needs, and whether it
runs here (notebook 06, section 12).

* **llama.cpp**: `-fa on` (`llama-server`, `llama-cli`; `auto`, the default of recent builds, turns it on where the
  backend supports it) or `Llama(..., flash_attn=True)` in llama-cpp-python. Its own kernels exist for the CPU, CUDA,
  Metal (Apple) and Vulkan backends. A quantized V cache (`--cache-type-v q8_0`, notebook 05) requires it.
* **PyTorch** `scaled_dot_product_attention` picks its flash backend by itself when it can run: on NVIDIA GPUs of
  compute capability 8.0 or newer (Ampere, Ada, Hopper: A100, RTX 30/40, H100) in fp16/bf16, and in PyTorch's own
  CPU kernel; older GPUs (a T4 is 7.5) get the memory-efficient backend, which tiles the same way.
* **transformers**: `attn_implementation="sdpa"` (the default) goes through the above;
  `"flash_attention_2"` calls the `flash-attn` package (`pip install flash-attn --no-build-isolation`, compiled
  against your CUDA), which needs an Ampere-or-newer NVIDIA GPU (or AMD MI200/MI300 with ROCm) and fp16/bf16;
  `"flash_attention_3"` needs FlashAttention-3 (an H100/H800 and CUDA 12.3+). Requirements from the
  Dao-AILab/flash-attention README.

`options_here()` checks each on this machine; `llama_cpp_flash_buffers()` measures what `-fa` changes in llama.cpp's
own memory (its compute buffer, read from its log) and prompt time, on the bundled model.
"""

from __future__ import annotations

import importlib.util
import re
import time
from dataclasses import dataclass
from typing import Any

from .errors import require_tokens
from .hardware import cpu_threads
from .kvcache import llama_with_log
from .models import bundled_gguf_path, require_llama_cpp

# torch and llama_cpp are imported inside the functions that use them: `import labkit` stays quick.

FLASH_ATTN_MIN_CAPABILITY = (8, 0)  # flash-attn 2: Ampere and newer (Dao-AILab/flash-attention README)
FLASH_ATTN_3_CAPABILITY = (9, 0)  # FlashAttention-3: Hopper


@dataclass(frozen=True)
class FlashOption:
    """One way to switch FlashAttention on, what it needs, and whether it runs here."""

    runtime: str
    switch: str  # the flag or argument
    needs: str  # hardware and packages
    here: bool
    why: str  # why it does or does not run here

    def row(self) -> dict:
        return {"runtime": self.runtime, "switch it on": self.switch, "needs": self.needs,
                "here": ("✅ " if self.here else "❌ ") + self.why}


def _gpu_capability() -> tuple[int, int] | None:
    import torch

    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


def options_here() -> list[FlashOption]:
    """Every FlashAttention switch of the course's runtimes, checked on this machine."""
    import torch

    from .attention import supported_sdpa_backends

    capability = _gpu_capability()
    gpu = f"{torch.cuda.get_device_name()} (compute capability {capability[0]}.{capability[1]})" if capability else None
    has_llama = importlib.util.find_spec("llama_cpp") is not None
    out = [FlashOption("llama.cpp", "-fa on  (llama-cpp-python: Llama(flash_attn=True))",
                       "its CPU, CUDA, Metal or Vulkan backend: any machine llama.cpp runs on",
                       has_llama, "llama-cpp-python is installed" if has_llama else
                       "llama-cpp-python is not installed (pip install llama-cpp-python)")]
    dtype = torch.bfloat16 if capability else torch.float32
    backends = supported_sdpa_backends(dtype, 64, "cuda" if capability else "cpu")
    where = gpu or "this CPU"
    out.append(FlashOption("PyTorch SDPA", "automatic; force it with sdpa_kernel(SDPBackend.FLASH_ATTENTION)",
                           "an NVIDIA GPU of compute capability 8.0+ in fp16/bf16, or PyTorch's CPU kernel",
                           "flash" in backends, f"{where}: backends {', '.join(backends)}"))
    out.append(FlashOption("transformers", 'attn_implementation="sdpa" (the default)', "any device PyTorch runs on",
                           True, "uses the SDPA backends above"))
    has_fa2 = importlib.util.find_spec("flash_attn") is not None
    fa2_gpu = capability is not None and capability >= FLASH_ATTN_MIN_CAPABILITY
    out.append(FlashOption("transformers", 'attn_implementation="flash_attention_2"',
                           "pip install flash-attn; an NVIDIA GPU of compute capability 8.0+ (A100, RTX 30/40, H100) or "
                           "AMD MI200/MI300; fp16/bf16", has_fa2 and fa2_gpu,
                           "; ".join(filter(None, [
                               None if fa2_gpu else (f"{gpu} is older than Ampere" if gpu else "no NVIDIA GPU here"),
                               None if has_fa2 else "flash-attn is not installed"])) or f"{gpu}, flash-attn installed"))
    has_fa3 = importlib.util.find_spec("flash_attn_interface") is not None
    fa3_gpu = capability is not None and capability >= FLASH_ATTN_3_CAPABILITY
    out.append(FlashOption("transformers", 'attn_implementation="flash_attention_3"',
                           "FlashAttention-3 (built from the flash-attention repository's hopper/ folder); an H100/H800, "
                           "CUDA 12.3+", has_fa3 and fa3_gpu,
                           "; ".join(filter(None, [None if fa3_gpu else (f"{gpu} is not a Hopper GPU" if gpu else
                                                                         "no NVIDIA GPU here"),
                                                   None if has_fa3 else "FlashAttention-3 is not installed"]))
                           or f"{gpu}, FlashAttention-3 installed"))
    return out


_COMPUTE_LOG = re.compile(r"(\w+) compute buffer size\s+=\s+([\d.]+)\s+MiB")


@dataclass(frozen=True)
class FlashBuffers:
    """llama.cpp with and without flash attention on one context: its compute buffer and one prompt's time."""

    flash_attn: bool
    n_ctx: int
    compute_bytes: float  # llama.cpp's own figure, summed over its backends
    prompt_tokens: int
    prompt_seconds: float


def llama_cpp_flash_buffers(n_ctx: int = 2048, prompt_tokens: int = 256, path: str | None = None) -> list[FlashBuffers]:
    """Create the bundled model's llama.cpp context with flash attention off and on, read the compute buffer it
    reports, and time one prompt of `prompt_tokens` tokens. Without flash attention the buffer holds a batch's
    attention scores against the whole context, so it grows with n_ctx; with it, it does not."""
    llama_cpp = require_llama_cpp("llama.cpp's flash attention")
    require_tokens("n_ctx", n_ctx)
    require_tokens("prompt_tokens", prompt_tokens)
    from .kvcache import filler_text

    words = filler_text()
    out = []
    for flash in (False, True):
        logs: list[str] = []
        llm = llama_with_log(llama_cpp, logs, model_path=str(path or bundled_gguf_path()), n_ctx=n_ctx, verbose=True,
                             flash_attn=flash, n_gpu_layers=0, n_threads=cpu_threads(), seed=0)
        sizes = [float(m) * 2**20 for _, m in _COMPUTE_LOG.findall("".join(logs))]
        tokens = llm.tokenize((words * (1 + 4 * prompt_tokens // len(words))).encode(), add_bos=True)[:prompt_tokens]
        llm.eval(tokens[:8])  # a warm-up: the first call pays for paging the weights in and starting the threads
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens)
        seconds = time.perf_counter() - start
        del llm
        out.append(FlashBuffers(flash, n_ctx, sum(sizes), len(tokens), seconds))
    return out


def flash_buffers_markdown(runs: Any, vocab_size: int, n_ubatch: int = 512) -> str:
    """The two llama.cpp runs in sentences, with the numbers, and what they do or do not show."""
    off, on = runs
    text = (f"llama.cpp on the bundled model with n_ctx = {off.n_ctx:,}: compute buffer **{off.compute_bytes / 2**20:.1f} "
            f"MiB** with flash attention off, **{on.compute_bytes / 2**20:.1f} MiB** with `-fa on`; one prompt of "
            f"{off.prompt_tokens} tokens took {off.prompt_seconds:.2f} s and {on.prompt_seconds:.2f} s. ")
    logits = n_ubatch * vocab_size * 4
    if abs(off.compute_bytes - on.compute_bytes) <= 0.02 * off.compute_bytes:
        text += (f"No difference in memory here: the buffer is sized for the largest step of a batch, and on this "
                 f"model that is the output layer's logits ({n_ubatch} tokens x {vocab_size:,} words x 4 bytes = "
                 f"{logits / 2**20:.0f} MiB), far more than 4 heads' scores at this length. ")
    else:
        text += (f"Flash attention saved {(off.compute_bytes - on.compute_bytes) / 2**20:.1f} MiB: without it the buffer "
                 "holds a batch's scores against the whole context. ")
    faster = on.prompt_seconds < off.prompt_seconds
    text += ("It was also faster on this prompt." if faster else
             "And it was not faster on this prompt: llama.cpp's CPU flash kernel saves memory traffic that matters "
             "little at this size on a CPU.")
    return text + (" Its gains show on GPUs and at long contexts, where the scores grow as N²: "
                   "benchmarks/long_context_gpu.py measures that on a GPU.")
