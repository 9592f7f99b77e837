"""What every notebook does first: say where it runs, pick the profile, warn about versions."""

from __future__ import annotations

import random

from .hardware import cpu_threads, detect_hardware
from .profiles import Profile, profile
from .versions import warn_if_versions_differ

REPO_URL = "https://github.com/llm-field-lab/llm-field-lab"
# What a pip user installs: every notebook's Colab cell and README's pip line say exactly this, and `make notebooks`
# runs the notebooks on labkit built as a wheel with these extras (tests/test_project.py keeps the three in step).
EXTRAS = "lab,llama"
PIP_REQUIREMENT = f"labkit[{EXTRAS}] @ git+{REPO_URL}"
PIP_INSTALL = f'pip install "{PIP_REQUIREMENT}"'
COLAB_CELL = f"""\
# Set-up. On Colab this installs labkit as any pip user gets it: 5-10 minutes the first time, as llama-cpp-python
# compiles from source (CPU build). Locally, `make lab` already did.
import sys
if "google.colab" in sys.modules:
    %pip install -q "{PIP_REQUIREMENT}"
"""


def start(notebook: str, seed: int = 0) -> Profile:
    """Print the machine and profile in one line, warn once about untested versions, seed RNGs.

    Returns the profile whose sizes the notebook uses.
    """
    import numpy as np
    import torch

    hw = detect_hardware(check_online=False)
    prof = profile()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if prof.device == "cpu":
        torch.set_num_threads(cpu_threads())
    where = hw.gpu_name or f"CPU, {hw.cpu_cores} cores"
    print(f"LLM Field Lab · {notebook} · profile '{prof.name}' on {where}"
          f"{' (Colab)' if hw.in_colab else ''} · torch {torch.__version__}")
    warn_if_versions_differ()
    _plot_style()
    return prof


def gpu_only(reason: str = "") -> bool:
    """True on a CUDA machine. Elsewhere print why the cell is skipped, and return False."""
    import torch

    if torch.cuda.is_available():
        return True
    print(f"⏭  Skipped on this machine (no CUDA GPU){': ' + reason if reason else ''}. "
          "Run this notebook on a GPU (e.g. Colab with a T4) to see it.")
    return False


def _plot_style() -> None:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return
    plt.rcParams.update({
        "figure.figsize": (8, 4.2), "figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "grid.alpha": 0.3, "axes.titleweight": "bold", "font.size": 10,
    })
