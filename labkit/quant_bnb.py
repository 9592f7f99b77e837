"""bitsandbytes: the bundled model loaded in LLM.int8() and NF4, its weights' bytes measured (notebook 04, section 6).

bitsandbytes quantizes a transformers model while it loads: every `nn.Linear` becomes int8 (LLM.int8(), outlier
columns kept in 16 bits) or NF4 (with or without double quantization); the embeddings, the norms and the output head
stay in the compute dtype. `load_bnb` loads the bundled Gemma 3 270M that way and measures the bytes its weights
really take next to `labkit.vram.weight_bytes`; `time_linear` times one linear layer per format (notebook 04's GPU
cell, benchmarks/quant_gpu.py). The by-hand NF4 of labkit.quant is checked against bitsandbytes' in the tests.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Any

from . import vram
from .dtypes import torch_dtype
from .errors import MissingPackageError, unknown
from .models import (
    BUNDLED,
    BUNDLED_LICENCE,
    LoadedModel,
    ModelReport,
    dense_cache_path,
    load_bundled_transformers,
    quiet_hf_loading,
)
from .quant import nf4_bits_per_param

# torch, transformers and bitsandbytes are imported inside the functions that use them: `import labkit` stays quick
# and works without the optional extras.


BNB_FORMATS = ("int8", "nf4", "nf4-no-double-quant")


class _DropLogRecords(logging.Filter):
    """Drops the log records whose message contains `text` (one known message, not a whole logger)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _require_bnb():
    # On a CPU with AVX512-BF16, importing bitsandbytes (0.49+) tries to fetch an optional faster kernel from the
    # Hub through the `kernels` package, and logs a warning with an install hint when it cannot. Its own CPU
    # kernel works without it (the course offline never has it): drop that one message, keep every other.
    cpu_ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
    optional_kernel = _DropLogRecords("kernels-community")
    cpu_ops.addFilter(optional_kernel)
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise MissingPackageError("bitsandbytes", "bitsandbytes int8 / NF4", extra="lab") from err
    finally:
        cpu_ops.removeFilter(optional_kernel)
    return bnb


def bnb_available() -> tuple[bool, str]:
    """(True, version) when bitsandbytes imports and quantizes a small matrix here, else (False, why)."""
    try:
        bnb = _require_bnb()
        import torch

        w = torch.randn(64, 64)
        packed, state = bnb.functional.quantize_4bit(w, quant_type="nf4")
        back = bnb.functional.dequantize_4bit(packed, state)
        if not torch.allclose(back, w, atol=0.5):
            return False, "bitsandbytes NF4 round trip gave wrong values"
        return True, bnb.__version__
    except (ImportError, RuntimeError, NotImplementedError, AttributeError) as err:
        return False, f"{type(err).__name__}: {err}"


def bnb_config(fmt: str, compute_dtype: str = "fp32"):
    """A transformers BitsAndBytesConfig for "int8" (LLM.int8()), "nf4" (double quant, QLoRA's
    default) or "nf4-no-double-quant"."""
    from transformers import BitsAndBytesConfig

    if fmt not in BNB_FORMATS:
        raise unknown("bitsandbytes format", fmt, BNB_FORMATS)
    if fmt == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=fmt == "nf4",
                              bnb_4bit_compute_dtype=torch_dtype(compute_dtype))


def quantized_weight_bytes(model: Any) -> dict[str, float]:
    """Measured bytes of a (bitsandbytes-)quantized model's weights, split like `vram.weight_bytes`:
    quantized codes, unquantized tensors, and scales (4-bit absmax and nested absmax; int8 row scales)."""
    out = {"quantized": 0.0, "unquantized": 0.0, "scales": 0.0}
    seen: set[int] = set()
    for p in [*model.parameters(), *model.buffers()]:
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        nbytes = float(p.numel() * p.element_size())
        state = getattr(p, "quant_state", None)
        scb = getattr(p, "SCB", None)
        if state is not None:
            out["quantized"] += nbytes
            out["scales"] += float(state.absmax.numel() * state.absmax.element_size())
            if getattr(state, "state2", None) is not None:
                s2 = state.state2
                out["scales"] += float(s2.absmax.numel() * s2.absmax.element_size())
        elif p.dtype == _int8():
            out["quantized"] += nbytes
            if scb is not None:
                out["scales"] += float(scb.numel() * scb.element_size())
        else:
            out["unquantized"] += nbytes
    return out


def _int8():
    import torch

    return torch.int8


def load_bnb(fmt: str, device: str = "cpu", compute_dtype: str | None = None):
    """The bundled Gemma 3 270M loaded through bitsandbytes in `fmt` (see BNB_FORMATS) on `device`.

    Returns (LoadedModel, {"measured": bytes by part, "estimated": vram.weight_bytes by part}).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if fmt not in BNB_FORMATS:
        raise unknown("bitsandbytes format", fmt, BNB_FORMATS)
    _require_bnb()
    compute_dtype = compute_dtype or ("fp32" if device == "cpu" else "bf16")
    dense = dense_cache_path()
    if not (dense / "model.safetensors").exists():
        load_bundled_transformers()  # converts the GGUF once
    start = time.perf_counter()
    with quiet_hf_loading():
        model = AutoModelForCausalLM.from_pretrained(str(dense), quantization_config=bnb_config(fmt, compute_dtype),
                                                     dtype=torch_dtype(compute_dtype), device_map={"": device}).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(dense))
    measured = quantized_weight_bytes(model)
    est = vram.weight_bytes(BUNDLED, "int8" if fmt == "int8" else "nf4", double_quant=fmt == "nf4",
                            compute_dtype=compute_dtype)
    report = ModelReport(name=BUNDLED, source="bundled-dense", runtime=f"transformers + bitsandbytes {fmt}",
                         parameters=sum(p.numel() for p in model.parameters()), dtype=fmt,
                         bytes=int(sum(measured.values())), licence=BUNDLED_LICENCE, random_weights=False,
                         location=str(dense), load_seconds=time.perf_counter() - start, device=device)
    return LoadedModel(model, tokenizer, report), {"measured": measured, "estimated": est}


def time_linear(formats: Sequence[str] = ("bf16", "int8", "nf4"), batches: Sequence[int] = (1, 16, 256, 4096),
                in_features: int = 4096, out_features: int = 14336, device: str = "cuda", reps: int = 20) -> list[dict]:
    """Time one linear layer (default: Llama 3.1 8B's MLP up-projection) per format on x of shape (batch, in).

    bf16 is torch's matmul; int8 is bitsandbytes' Linear8bitLt (LLM.int8(), outlier threshold 6); nf4 its
    Linear4bit. Each row: ms per product (median of 3 bursts of `reps`), TFLOP/s, and the weight bytes read per
    second. At batch 1 the product is memory-bound (fewer bytes can win); at large batches it is compute-bound
    and a quantized layer pays extra work for de-quantizing or rescaling.
    """
    import torch

    for fmt in formats:
        if fmt not in ("bf16", "int8", "nf4"):
            raise unknown("format", fmt, ("bf16", "int8", "nf4"))
    dtype = torch.bfloat16
    dense = torch.nn.Linear(in_features, out_features, bias=False, dtype=dtype)
    torch.nn.init.normal_(dense.weight, std=0.02)
    layers = {}
    for fmt in formats:
        if fmt == "bf16":
            layers[fmt] = dense.to(device)
            continue
        bnb = _require_bnb()
        w = dense.weight.data.detach().cpu().clone()
        if fmt == "int8":
            layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=False, has_fp16_weights=False, threshold=6.0)
            layer.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=dtype, quant_type="nf4")
            layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4")
        layers[fmt] = layer.to(device)
    weight_bytes = {"bf16": 2.0, "int8": 1.0 + 4 / in_features, "nf4": nf4_bits_per_param(64, True) / 8}

    def sync() -> None:
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    rows = []
    for batch in batches:
        x = torch.randn(batch, in_features, dtype=dtype, device=device)
        for fmt, layer in layers.items():
            times = []
            # LLM.int8() casts bf16 inputs to fp16 (part of its cost here) and warns on every call: thousands of
            # lines in the notebook otherwise (seen on the H200 run of 04)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
                for _ in range(3):
                    layer(x)
                for _ in range(3):
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        layer(x)
                    sync()
                    times.append((time.perf_counter() - t0) / reps)
            t = sorted(times)[1]
            rows.append({"format": fmt, "batch": batch, "ms": t * 1e3,
                         "tflops": 2 * batch * in_features * out_features / t / 1e12,
                         "weight_gb_per_s": weight_bytes[fmt] * in_features * out_features / t / 1e9})
    return rows


def memory_table(results: dict[str, dict]) -> list[dict]:
    """Rows of measured vs estimated weight bytes (MiB) per format, from {format: load_bnb(...)[1]}."""
    rows = []
    for fmt, r in results.items():
        m, e = sum(r["measured"].values()), sum(r["estimated"].values())
        rows.append({"format": fmt, "measured MiB": m / 2**20, "estimated MiB": e / 2**20,
                     "error of the estimate": (e - m) / m, "kept unquantized MiB": r["measured"]["unquantized"] / 2**20})
    return rows
