"""Profiles: the sizes notebooks use, picked from the hardware (override with LABKIT_PROFILE).

Three profiles, one per kind of device: `cpu` (CI's 2 cores: small sequence lengths, few steps), `gpu` (CUDA) and
`mps` (Apple silicon). A GPU profile is sized by the memory labkit may use on the device, in tiers: the tier whose
smallest card fits is chosen, so everything in it fits the learner's card:

    tier    usable GiB   cards                                               as a capped run
    8 GB    below 13     8-12 GB laptop and desktop cards                    LABKIT_GPU_MEMORY=7.5GiB
    16 GB   13 to 21     a T4 (Colab's free GPU, 14.6 GiB shown), 16 GB      LABKIT_GPU_MEMORY=15GiB
    24 GB   21 to 36     RTX 3090/4090, A10G, L4, 32 GB cards
    40 GB+  36 and up    A100, H100, H200, 48 GB cards: the true sizes

"usable" is what the device shows less labkit's 5% safety margin (labkit.hardware.usable_memory); on Apple silicon
the GPU's share of unified memory. Cells that need more than a tier has say so and what a bigger card shows
(labkit.course.fits_here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import LabkitError, unknown

GIB = 1024**3


@dataclass(frozen=True)
class Profile:
    """Sizes a notebook should use on this machine. Notebooks read these; none hard-codes `cuda`."""

    name: str  # "cpu", "gpu" (CUDA) or "mps" (Apple silicon)
    device: str  # "cpu", "cuda" or "mps"
    dtype: str  # the dtype for real-model runs on this device
    seq_lens: tuple[int, ...]  # sequence lengths for attention / KV-cache sweeps
    max_new_tokens: int  # tokens to generate in demos and benchmarks
    bench_runs: int  # timed runs per measurement (after one warm-up)
    train_steps: int  # optimizer steps in the LoRA notebooks
    random_models: tuple[str, ...] = field(default_factory=tuple)  # configs to build at true size, smallest first
    tier: str = "cpu"  # "cpu", or a GPU memory tier: "8 GB", "16 GB", "24 GB", "40 GB+"
    usable_bytes: float | None = None  # the device memory the tier was chosen from (None on the CPU)

    @property
    def is_gpu(self) -> bool:
        """True on a CUDA GPU: the cells with CUDA-only paths (Triton, bitsandbytes, CUDA graphs) read this."""
        return self.name == "gpu"

    @property
    def is_full_size(self) -> bool:
        """True where the notebooks run at the sizes the course quotes (the 40 GB+ tier)."""
        return self.tier == TIERS[-1].name

    def fits(self, needed_bytes: float) -> bool:
        """Whether `needed_bytes` (an estimate) fits the memory this profile was sized for."""
        return self.usable_bytes is not None and needed_bytes <= self.usable_bytes

    def describe(self) -> str:
        if self.usable_bytes is None:
            return f"profile '{self.name}'" + (f", {self.tier} tier" if self.tier != "cpu" else "")
        return f"profile '{self.name}', {self.tier} tier ({self.usable_bytes / GIB:.1f} GiB usable)"


@dataclass(frozen=True)
class Tier:
    name: str
    min_usable_gib: float  # the smallest usable memory this tier is for: its sizes fit it
    seq_lens: tuple[int, ...]
    random_models: tuple[str, ...]  # smallest first; random_models[0] fits the tier with room to spare
    example: str


# Sizes per tier, each chosen to fit the tier's smallest card with the cells' own estimates (notebook 03's
# largest_that_fits picks among random_models; 06's sweep stops naive attention where it runs out of memory).
TIERS = (
    Tier("8 GB", 0, (512, 1024, 2048, 4096), ("llama-3.2-1b", "qwen2.5-1.5b"), "an 8-12 GB laptop or desktop GPU"),
    Tier("16 GB", 13, (512, 1024, 2048, 4096, 8192), ("llama-3.2-1b", "qwen2.5-1.5b"), "a T4 (Colab) or a 16 GB card"),
    Tier("24 GB", 21, (512, 1024, 2048, 4096, 8192), ("llama-3.2-1b", "qwen2.5-1.5b", "llama-3.1-8b", "qwen2.5-7b"),
         "a 24 GB card (RTX 3090/4090, A10G, L4)"),
    Tier("40 GB+", 36, (512, 1024, 2048, 4096, 8192, 16384),
         ("llama-3.2-1b", "llama-3.1-8b", "mistral-7b-v0.3", "qwen2.5-7b"), "an A100, H100 or H200"),
)
# (Every model listed has a context window of 8,192 tokens or more: notebook 03 measures one at 8,192.)

PROFILES = {
    "cpu": dict(
        dtype="fp32",
        seq_lens=(128, 256, 512, 1024),
        max_new_tokens=32,
        bench_runs=3,
        train_steps=30,
        random_models=("qwen2.5-0.5b",),
    ),
    # The GPU profiles' sequence lengths and models come from their tier (TIERS).
    "gpu": dict(dtype="bf16", max_new_tokens=128, bench_runs=5, train_steps=100),
    "mps": dict(dtype="fp32", max_new_tokens=64, bench_runs=3, train_steps=100),
}


def tier_for(usable_bytes: float) -> Tier:
    """The largest tier whose smallest card has no more usable memory than `usable_bytes`."""
    return [t for t in TIERS if usable_bytes >= t.min_usable_gib * GIB][-1]


def profile(name: str | None = None, hardware=None) -> Profile:
    """The profile for this machine: `gpu` with CUDA, `mps` on Apple silicon, else `cpu`.

    `LABKIT_PROFILE=cpu|gpu|mps` (or the `name` argument) overrides the choice; a GPU profile on a machine without
    that GPU raises, since its sizes would not fit. A GPU profile's tier follows the memory labkit may use there
    (LABKIT_GPU_MEMORY caps it). `hardware` (a labkit.hardware.Hardware) replaces detection, for tests.
    """
    from .hardware import SAFETY_MARGIN, detect_hardware

    hw = hardware or detect_hardware(check_online=False)
    default = {"cuda": "gpu", "mps": "mps"}.get(hw.device, "cpu")
    chosen = name or os.environ.get("LABKIT_PROFILE") or default
    if chosen not in PROFILES:
        raise unknown("profile", chosen, PROFILES)
    if chosen == "gpu" and hw.device != "cuda":
        raise LabkitError("the 'gpu' profile needs a CUDA GPU, and none was found. Use LABKIT_PROFILE=cpu.")
    if chosen == "mps" and hw.device != "mps":
        raise LabkitError("the 'mps' profile needs Apple silicon with PyTorch's MPS backend, and none was found. "
                          "Use LABKIT_PROFILE=cpu.")
    if chosen == "cpu":
        return Profile(name="cpu", device="cpu", **PROFILES["cpu"])
    # a GPU that does not say how much memory it has gets the smallest tier: its sizes fit every card
    usable = hw.vram_total_bytes * (1 - SAFETY_MARGIN) if hw.vram_total_bytes else None
    tier = tier_for(usable) if usable else TIERS[0]
    sizes = dict(PROFILES[chosen])
    if chosen == "mps" and hw.bf16_supported:  # macOS 14+; before it MPS has no bf16 (and Gemma overflows fp16)
        sizes["dtype"] = "bf16"
    return Profile(name=chosen, device="cuda" if chosen == "gpu" else "mps", seq_lens=tier.seq_lens,
                   random_models=tier.random_models, tier=tier.name, usable_bytes=usable, **sizes)
