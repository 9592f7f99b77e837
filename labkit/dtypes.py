"""Bytes per weight for every number format the course talks about. One table, used everywhere.

GGUF K-quants mix types per tensor, so their size is given as the *effective* bits per weight of a
whole model, from the table in llama.cpp's `tools/quantize/README.md` (Llama 2 7B). Q8_0 and Q4_0
are exact: a block of 32 weights stores one fp16 scale plus 32 x 8 (or 32 x 4) bits.
"""

from __future__ import annotations

from .errors import LabkitError, unknown

# torch is imported inside the functions that use it: `import labkit` stays quick and works without the
# optional extras.

# name -> bits per weight (effective, scales included)
BITS_PER_WEIGHT: dict[str, float] = {
    "fp32": 32.0,
    "fp16": 16.0,
    "bf16": 16.0,
    "int8": 8.0,  # bitsandbytes LLM.int8(): int8 weights + one fp16 scale per row (negligible)
    "int4": 4.0,
    "nf4": 4.0,  # bitsandbytes NF4 packs 2 weights per byte; scales are counted by the vram module
    "Q8_0": 8.5,
    "Q6_K": 6.56,
    "Q5_K_M": 5.68,
    "Q4_K_M": 4.84,
    "Q4_0": 4.5,
    "Q3_K_M": 3.91,
    "Q2_K": 3.35,
    # IQ types (quantized with an importance matrix): the bits of the type, from llama-quantize's own list; a whole
    # file averages a little more, as llama.cpp keeps the output head larger
    "IQ4_XS": 4.25,
    "IQ3_M": 3.66,
    "IQ2_M": 2.7,
}

ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "8bit": "int8",
    "4bit": "int4",
}

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def normalize_dtype(name: str) -> str:
    """Canonical dtype name ('bfloat16' -> 'bf16', 'q4_k_m' -> 'Q4_K_M'); raises on unknown names."""
    key = str(name).strip().removeprefix("torch.")
    key = ALIASES.get(key.lower(), key)
    for known in BITS_PER_WEIGHT:
        if key.lower() == known.lower():
            return known
    raise unknown("dtype", name, BITS_PER_WEIGHT)


def bytes_per_weight(dtype: str) -> float:
    """Bytes one weight takes in `dtype` (fractional for packed formats: nf4 -> 0.5)."""
    return BITS_PER_WEIGHT[normalize_dtype(dtype)] / 8


def torch_dtype(dtype: str):
    """The torch dtype for a float format name; raises for formats torch cannot hold directly."""
    import torch

    canonical = normalize_dtype(dtype)
    if canonical not in TORCH_DTYPES:
        raise LabkitError(f"{dtype!r} is a quantized format, not a torch dtype. Torch dtypes: {', '.join(TORCH_DTYPES)}")
    return getattr(torch, TORCH_DTYPES[canonical])
