"""What every notebook does first: say where it runs, pick the profile, warn about versions."""

from __future__ import annotations

import random

from .hardware import cpu_threads, detect_hardware
from .llama_server_build import SERVER_CMAKE_ARGS
from .paths import EXTRAS, PIP_INSTALL, PIP_REQUIREMENT, REPO_URL  # noqa: F401  (the course's names for them)
from .profiles import Profile, profile
from .versions import warn_if_versions_differ

# Every notebook's first cell: on Colab, install labkit exactly as README's pip line does (labkit.paths.PIP_INSTALL),
# with llama-cpp-python compiled once together with llama.cpp's llama-server (the switches the Makefile's build
# uses, labkit/llama_server_build.py): pip reads CMAKE_ARGS from the environment. Colab is Linux: $ORIGIN.
COLAB_CMAKE_ARGS = " ".join([*SERVER_CMAKE_ARGS, "-DCMAKE_INSTALL_RPATH=$ORIGIN/../lib"])
COLAB_CELL = f"""\
# Set-up. On Colab this installs labkit as any pip user gets it: 5-10 minutes the first time, as llama-cpp-python
# compiles from source together with llama.cpp's llama-server (CPU build). Locally, `make lab` already did.
import os
import sys
if "google.colab" in sys.modules:
    os.environ["CMAKE_ARGS"] = "{COLAB_CMAKE_ARGS}"
    %pip install -q "{PIP_REQUIREMENT}"
"""


def start(notebook: str, seed: int = 0) -> Profile:
    """Print the machine and profile in one line, warn once about untested versions, seed RNGs.

    Returns the profile whose sizes the notebook uses.
    """
    import numpy as np
    import torch

    hw = detect_hardware(check_online=False)
    prof = profile(hardware=hw)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if prof.device != "cuda":  # on Apple silicon too: the CPU side of MPS runs threads of its own
        torch.set_num_threads(cpu_threads())
    where = hw.gpu_name or f"CPU, {hw.cpu_cores} cores"
    print(f"LLM Field Lab · {notebook} · {prof.describe()} on {where}"
          f"{' (Colab)' if hw.in_colab else ''}{_cap_note(hw)} · torch {torch.__version__}")
    warn_if_versions_differ()
    _plot_style()
    _record_gpu_peak_at_exit(notebook)
    return prof


def _cap_note(hw) -> str:
    if hw.gpu_memory_cap_bytes and hw.vram_card_bytes and hw.vram_card_bytes > hw.gpu_memory_cap_bytes:
        return f", capped to {hw.gpu_memory_cap_bytes / 2**30:g} GiB by LABKIT_GPU_MEMORY"
    return ""


def gpu_only(reason: str = "") -> bool:
    """True on a CUDA machine. Elsewhere print why the cell is skipped, and return False."""
    import torch

    if torch.cuda.is_available():
        return True
    print(f"⏭  Skipped on this machine (no CUDA GPU){': ' + reason if reason else ''}. "
          "Run this notebook on a GPU (e.g. Colab with a T4) to see it.")
    return False


def fits_here(needed_bytes: float, what: str, bigger: str, prof: Profile | None = None) -> bool:
    """True when `needed_bytes` (an estimate) fits the memory this profile may use. Otherwise print that `what` is
    skipped at this size, what it needs and has, and what `bigger` (the cell on a card that fits it) shows."""
    prof = prof or profile()
    if prof.fits(needed_bytes):
        return True
    have = f"{prof.usable_bytes / 2**30:.1f} GiB usable here" if prof.usable_bytes else "no GPU here"
    print(f"⏭  {what} needs about {needed_bytes / 2**30:.1f} GiB ({have}, {prof.describe()}). "
          f"On a card with room for it: {bigger}")
    return False


def _record_gpu_peak_at_exit(notebook: str) -> None:
    """With LABKIT_GPU_REPORT set (benchmarks/gpu_course_run.py sets it), write torch's peak GPU memory of this
    kernel to that JSON-lines file when it exits, so each notebook's peak is known."""
    import atexit
    import json
    import os

    import torch

    path = os.environ.get("LABKIT_GPU_REPORT")
    if not path or not torch.cuda.is_available():
        return

    def write() -> None:
        record = {"notebook": notebook, "max_reserved_bytes": torch.cuda.max_memory_reserved(),
                  "max_allocated_bytes": torch.cuda.max_memory_allocated(),
                  "out_of_memory_errors": torch.cuda.memory_stats().get("num_ooms", 0),  # caught ones too
                  "cap_bytes": os.environ.get("LABKIT_GPU_MEMORY") or None}
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    atexit.register(write)


def _plot_style() -> None:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return
    plt.rcParams.update({
        "figure.figsize": (8, 4.2), "figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "grid.alpha": 0.3, "axes.titleweight": "bold", "font.size": 10,
    })
