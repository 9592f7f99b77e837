"""Measuring memory on this machine, beside labkit.vram's estimates (notebooks 03, 06, 07).

- `TensorMemoryTracker`: the peak of the tensors PyTorch creates inside a `with` block, on any device
  (the CPU counterpart of torch.cuda.max_memory_allocated);
- `cuda_context_bytes`: what this process holds on the GPU outside PyTorch's allocator;
- `measure_inference`: load a model (random weights at true size, or the bundled real one), generate,
  and report the same parts as `vram.estimate_inference`: on CUDA in this process, on CPU in a fresh
  child process (a long-lived one reuses memory it freed and hides the increase);
- `load_for_measurement`: the model `measure_inference` runs (bitsandbytes int8 / nf4 on CUDA too);
- `measure_training`: training steps (full, LoRA, QLoRA) in this process, in the same shape as
  `vram.estimate_training`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

import psutil

from .architecture import architecture, read_config
from .dtypes import normalize_dtype
from .errors import LabkitError, MissingPackageError, unknown
from .formatting import GIB
from .hardware import cpu_threads, detect_hardware
from .models import BUNDLED, build_random_model, dense_cache_path, load_bundled_transformers
from .vram import (
    FLOAT_DTYPES,
    GGUF_DTYPES,
    TRAINING_METHODS,
    MemoryEstimate,
    estimate_inference,
    lora_targets,
)
from .vram_trace import TensorMemoryTracker  # noqa: F401  (lora, tests and notebooks use it from here)

# torch, transformers, pynvml and bitsandbytes are imported inside the functions that need them: importing
# labkit stays quick and works on machines without them (the CPU child process imports torch itself).

def cuda_context_bytes() -> float:
    """GPU memory this process holds outside PyTorch's allocator (the CUDA context, loaded kernels,
    cuDNN/cuBLAS handles): the driver's count for this process minus PyTorch's reserved memory.

    Uses NVML's per-process figure when it is available, else the device's used memory (which
    counts other processes too)."""
    import torch

    reserved = torch.cuda.memory_reserved()
    try:
        import pynvml

        pynvml.nvmlInit()
        index = torch.cuda.current_device()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory:
                return float(proc.usedGpuMemory - reserved)
    except Exception:  # NVML missing, or PIDs hidden by a container: fall back below
        pass
    free, total = torch.cuda.mem_get_info()
    return float(total - free - reserved)


def _rss_bytes(kind: str = "VmRSS") -> int:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"{kind}:\s+(\d+) kB", f.read())
        return int(match.group(1)) * 1024 if match else 0
    except OSError:
        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss)) if kind == "VmHWM" else int(info.rss)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cache_storage_bytes(cache: Any) -> float:
    """Bytes of the storage a transformers cache object holds."""
    seen: dict[int, int] = {}
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None and hasattr(t, "untyped_storage"):
                st = t.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()
    return float(sum(seen.values()))


def bitsandbytes_config(dtype: str):
    import torch
    from transformers import BitsAndBytesConfig

    if dtype == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4" if dtype == "int4" else "nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)


def load_for_measurement(model: Any, dtype: str, device: str, weights: str = "random"):
    """The model `measure_inference` runs: random weights at true size (or the bundled real model)."""
    import torch

    if weights == "bundled":
        if model not in (BUNDLED, None):
            raise LabkitError(f"weights='bundled' is only for {BUNDLED!r}, the model the course ships.")
        return load_bundled_transformers(dtype=dtype, device=device).model
    if weights != "random":
        raise unknown("weights", weights, ("random", "bundled"))
    if isinstance(model, (str, os.PathLike)):  # a shipped name, a config.json path or a Hub id
        model = read_config(str(model))
    if isinstance(model, dict) and model.get("quantization_config"):
        # a pre-quantized checkpoint's config (GPT-OSS ships MXFP4 experts): random weights in `dtype`
        model = {k: v for k, v in model.items() if k != "quantization_config"}
    if dtype in FLOAT_DTYPES:
        return build_random_model(model, dtype=dtype, device=device).model
    if device != "cuda":
        raise LabkitError(f"{dtype} (bitsandbytes) is measured on a CUDA GPU; on CPU use fp32 or bf16.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise MissingPackageError("bitsandbytes", f"Measuring {dtype}", extra="gpu") from err
    dense = build_random_model(model, dtype="bf16", device="cuda").model
    state = dense.state_dict()
    config = dense.config
    cls = type(dense)
    del dense
    quantized = cls.from_pretrained(None, config=config, state_dict=state, quantization_config=bitsandbytes_config(dtype),
                                    device_map={"": torch.cuda.current_device()}, dtype=torch.bfloat16)
    del state
    gc.collect()
    torch.cuda.empty_cache()
    return quantized.eval()


def measure_inference(model: Any, dtype: str = "bf16", context: int = 4096, batch: int = 1, new_tokens: int = 8,
                      device: str | None = None, weights: str = "random", check_fit: bool = True,
                      seed: int = 0) -> MemoryEstimate:
    """Run the real thing and measure its peak memory, in the same shape as `estimate_inference`.

    Loads `model` (random weights at true size from a shipped config, or `weights="bundled"` for
    the course's real Gemma 3 270M), feeds a random prompt of `context` tokens (x `batch`) and
    generates `new_tokens`.
    - CUDA: torch.cuda.max_memory_allocated() over loading and generating, plus this process's
      CUDA context (cuda_context_bytes()).
    - CPU: in a fresh Python process (a long-lived one reuses memory it freed earlier and hides the
      increase), the peak resident set (RSS) increase from before the model is loaded to the end of
      generation; TensorMemoryTracker splits it into tensors (weights, KV, activations) and the
      rest (overhead).
    Refuses up front (LabkitError) when the estimate does not fit the free memory.
    """
    import torch

    dtype = normalize_dtype(dtype)
    device = device or detect_hardware(check_online=False).device
    if device not in ("cuda", "cpu"):
        raise unknown("device for measurement", device, ("cuda", "cpu"))
    if dtype in GGUF_DTYPES:
        raise LabkitError(f"{dtype} is a GGUF type: measure it in llama.cpp (labkit.runtimes); transformers "
                          "de-quantizes GGUF weights.")
    if weights not in ("random", "bundled"):
        raise unknown("weights", weights, ("random", "bundled"))
    est_model = "gemma-3-270m" if weights == "bundled" else model
    est = estimate_inference(est_model, dtype, context, batch, new_tokens, device=device)
    if check_fit:
        if device == "cuda":
            free = torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
        else:
            free = psutil.virtual_memory().available
        if est.total > free:
            raise LabkitError(
                f"not running: the estimate ({est.total / GIB:.1f} GiB) does not fit the free memory of this "
                f"{device} ({free / GIB:.1f} GiB). Try a shorter context, a smaller batch, a quantized dtype "
                "(int8, nf4) or a smaller model. (check_fit=False runs it anyway, at the risk of running out of memory.)")
    if device == "cpu":
        numbers = _measure_cpu_in_child(model, dtype, context, batch, new_tokens, weights, seed)
    else:
        numbers = _measure_here(model, dtype, context, batch, new_tokens, weights, seed, "cuda")
    return MemoryEstimate(
        weights=numbers["weights"], kv_cache=numbers["kv_cache"],
        activations=max(0.0, numbers["peak"] - numbers["weights"] - numbers["kv_cache"]),
        overhead=numbers["overhead"], kind="measured", label=f"{est.inputs['model']} {dtype} on {device}",
        details={"peak (weights + KV + activations)": numbers["peak"], "seconds": numbers["seconds"]},
        inputs=dict(est.inputs, weights=weights),
    )


def _measure_here(model: Any, dtype: str, context: int, batch: int, new_tokens: int, weights: str, seed: int,
                  device: str) -> dict[str, float]:
    """Load, generate, and return peak / weights / kv_cache / overhead in bytes (this process)."""
    import torch

    gc.collect()
    torch.manual_seed(seed)
    start = time.perf_counter()
    if device == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    net = load_for_measurement(model, dtype, device, weights)
    if device == "cuda":
        weights_bytes = float(torch.cuda.memory_allocated() - base)
        torch.cuda.reset_peak_memory_stats()  # the peak of generating, not of loading
    else:
        weights_bytes = float(sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()]))
        loaded = _rss_bytes()
        exact = _reset_peak_rss()
    config = net.config.get_text_config() if hasattr(net.config, "get_text_config") else net.config
    ids = torch.randint(3, min(config.vocab_size, 32000), (batch, context), device=device)
    tracker = TensorMemoryTracker() if device == "cpu" else contextlib.nullcontext()
    with torch.no_grad(), tracker:
        out = net.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max(new_tokens, 1),
                           min_new_tokens=max(new_tokens, 1), do_sample=False, return_dict_in_generate=True,
                           pad_token_id=0)
    kv = cache_storage_bytes(out.past_key_values)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = float(torch.cuda.max_memory_allocated() - base)
        overhead = cuda_context_bytes()
    else:
        high = _rss_bytes("VmHWM") if exact else _rss_bytes()
        peak_rss = max(high, loaded) - base  # what the process grew by, at most
        peak = weights_bytes + tracker.peak  # tensors: the weights and the most alive during generate
        overhead = max(0.0, peak_rss - peak)  # the rest: allocator, thread pools, kernels loaded on first use
    del out, net, ids
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"peak": peak, "weights": weights_bytes, "kv_cache": kv, "overhead": float(overhead),
            "seconds": time.perf_counter() - start}


def _measure_cpu_in_child(model: Any, dtype: str, context: int, batch: int, new_tokens: int, weights: str,
                          seed: int) -> dict[str, float]:
    if not isinstance(model, (str, dict)):
        raise LabkitError("on CPU, measure_inference runs in a fresh process: pass a shipped config name, a "
                          "config.json path, a Hub id or a config dict (or weights='bundled'), not a model object.")
    args = json.dumps(dict(model=model, dtype=dtype, context=context, batch=batch, new_tokens=new_tokens,
                           weights=weights, seed=seed))
    code = "import sys, labkit.vram_measure as m; m._child_main(sys.argv[1])"
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error")
    if weights == "bundled":
        if not (dense_cache_path() / "model.safetensors").exists():  # convert the GGUF once, not while measuring
            prepare = "from labkit.models import load_bundled_transformers as f; f()"
            subprocess.run([sys.executable, "-c", prepare], check=True, env=env)
    done = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("LABKIT_VRAM "):
            return json.loads(line.removeprefix("LABKIT_VRAM "))
    raise LabkitError(f"the measuring process failed:\n{done.stderr[-2000:]}")


def _child_main(args: str) -> None:
    import torch

    torch.set_num_threads(cpu_threads())
    a = json.loads(args)
    numbers = _measure_here(a["model"], a["dtype"], a["context"], a["batch"], a["new_tokens"], a["weights"],
                            a["seed"], "cpu")
    print("LABKIT_VRAM " + json.dumps(numbers), flush=True)


# ============================================================================ training


def _training_steps(net: Any, optimizer: Any, ids: Any, cast: Any, steps: int) -> None:
    for _ in range(steps):
        with cast:
            loss = net(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss


def _with_lora(net: Any, model: Any, rank: int, target_modules: str | tuple[str, ...] | list[str], seed: int):
    """`net` wrapped with peft's LoRA as labkit.lora.add_lora wraps it (alpha 2r, no dropout, no bias); the
    targets checked first as vram.lora_targets reads them (names peft moves onto the experts' weights included)."""
    import torch

    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise MissingPackageError("peft", "LoRA training", extra="lab") from err
    lora_targets(model, rank, target_modules)  # an unknown module name: a LabkitError naming the accepted ones
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules))
    torch.manual_seed(seed)
    return get_peft_model(net, config)


def measure_training(model: Any, method: str = "lora", dtype: str = "bf16", seq_len: int = 512, batch: int = 1,
                     lora_rank: int = 16, target_modules: str | tuple[str, ...] | list[str] = "all-linear",
                     gradient_checkpointing: bool = False, mixed_precision: bool = True, device: str | None = None,
                     steps: int = 2, seed: int = 0) -> MemoryEstimate:
    """Run `steps` training steps of `model` (random weights at true size) the way `vram.estimate_training`
    assumes them, and measure the peak: forward on every position with the loss, backward, AdamW (torch's default
    for the device), zero_grad(set_to_none=True).

    full: `dtype` fp32, or mixed precision (an fp32 model under torch.autocast(dtype)), or with
    mixed_precision=False the model itself in `dtype`; lora / qlora: peft adapters (fp32) on a frozen base in
    `dtype` (qlora: bitsandbytes NF4, CUDA only). CUDA: torch.cuda.max_memory_allocated() over the steps plus the
    process's CUDA context; CPU: the weights plus the peak of the tensors the steps create (TensorMemoryTracker),
    no overhead. Returns weights (after loading and adding adapters), activations (everything else at the peak:
    gradients, optimizer states, saved tensors) and overhead.
    """
    import torch

    if method not in TRAINING_METHODS:
        raise unknown("training method", method, TRAINING_METHODS)
    dtype = normalize_dtype(dtype)
    device = device or detect_hardware(check_online=False).device
    if device not in ("cuda", "cpu"):
        raise unknown("device for measurement", device, ("cuda", "cpu"))
    if method == "qlora" and device != "cuda":
        raise LabkitError("QLoRA (bitsandbytes NF4) is measured on a CUDA GPU; on a CPU measure method='lora'.")
    autocast = method == "full" and mixed_precision and dtype != "fp32"
    load_dtype = "fp32" if autocast else ("nf4" if method == "qlora" else dtype)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
    torch.manual_seed(seed)
    net = load_for_measurement(model, load_dtype, device)
    if gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method != "full":
        net = _with_lora(net, model, lora_rank, target_modules, seed)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    config = net.config.get_text_config() if hasattr(net.config, "get_text_config") else net.config
    ids = torch.randint(3, config.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(seed)).to(device)
    cast = torch.autocast(device, dtype=getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}.get(dtype, "float32"))) \
        if autocast else contextlib.nullcontext()
    net.train()
    run = lambda: _training_steps(net, optimizer, ids, cast, steps)  # noqa: E731
    start = time.perf_counter()
    if device == "cuda":
        torch.cuda.synchronize()
        weights = float(torch.cuda.memory_allocated() - base)
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        peak = float(torch.cuda.max_memory_allocated() - base)
        overhead = cuda_context_bytes()
    else:
        weights = float(sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()]))
        with TensorMemoryTracker() as tracker:
            run()
        peak, overhead = weights + tracker.peak, 0.0
    seconds = time.perf_counter() - start
    net = optimizer = params = run = None
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    name = model if isinstance(model, str) else architecture(model).name
    return MemoryEstimate(
        weights=weights, kv_cache=0.0, activations=max(0.0, peak - weights), overhead=overhead, kind="measured",
        label=f"{name} {method} {dtype} on {device}", details={"peak (allocated)": peak, "seconds": seconds},
        inputs=dict(model=name, method=method, dtype=dtype, seq_len=seq_len, batch=batch, lora_rank=lora_rank,
                    gradient_checkpointing=gradient_checkpointing, mixed_precision=autocast, device=device,
                    steps=steps),
    )
