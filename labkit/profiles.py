"""Profiles: the sizes notebooks use, picked from the hardware (override with LABKIT_PROFILE)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import unknown


@dataclass(frozen=True)
class Profile:
    """Sizes a notebook should use on this machine. Notebooks read these; none hard-codes `cuda`."""

    name: str
    device: str
    dtype: str  # the dtype for real-model runs on this device
    seq_lens: tuple[int, ...]  # sequence lengths for attention / KV-cache sweeps
    max_new_tokens: int  # tokens to generate in demos and benchmarks
    bench_runs: int  # timed runs per measurement (after one warm-up)
    train_steps: int  # optimizer steps in the LoRA notebooks
    random_models: tuple[str, ...] = field(default_factory=tuple)  # configs to build at true size

    @property
    def is_gpu(self) -> bool:
        return self.name == "gpu"


PROFILES = {
    "cpu": dict(
        dtype="fp32",
        seq_lens=(128, 256, 512, 1024),
        max_new_tokens=32,
        bench_runs=3,
        train_steps=30,
        random_models=("qwen2.5-0.5b",),
    ),
    "gpu": dict(
        dtype="bf16",
        seq_lens=(512, 1024, 2048, 4096, 8192, 16384),
        max_new_tokens=128,
        bench_runs=5,
        train_steps=100,
        random_models=("llama-3.2-1b", "llama-3.1-8b", "mistral-7b-v0.3", "qwen2.5-7b"),
    ),
}


def profile(name: str | None = None) -> Profile:
    """The profile for this machine: `gpu` when CUDA is available, else `cpu`.

    `LABKIT_PROFILE=cpu|gpu` (or the `name` argument) overrides the choice; the `gpu` profile
    on a machine without CUDA raises, since its sizes would not fit.
    """
    from .hardware import detect_hardware

    hw = detect_hardware(check_online=False)
    chosen = name or os.environ.get("LABKIT_PROFILE") or ("gpu" if hw.device == "cuda" else "cpu")
    if chosen not in PROFILES:
        raise unknown("profile", chosen, PROFILES)
    if chosen == "gpu" and hw.device != "cuda":
        from .errors import LabkitError

        raise LabkitError("the 'gpu' profile needs a CUDA GPU, and none was found. Use LABKIT_PROFILE=cpu.")
    device = "cuda" if chosen == "gpu" else "cpu"
    return Profile(name=chosen, device=device, **PROFILES[chosen])
