"""labkit: the helpers behind LLM Field Lab. Import what you need:

    import labkit
    labkit.detect_hardware()          # what this machine is
    labkit.profile()                  # sizes for this machine ('cpu', 'gpu' by its memory tier, or 'mps')
    labkit.load_model()               # the bundled Gemma 3 270M (real weights, offline)
    labkit.check("00.tokens_per_second", answer, tokens=..., seconds=...)

Topic modules (labkit.catalog, labkit.vram, labkit.runtimes, ...) are imported on demand.
"""

from .check import check
from .errors import LabkitError, MissingPackageError
from .hardware import detect_hardware, measure_memory_bandwidth
from .models import build_random_model, list_configs, load_config, load_model
from .profiles import profile
from .versions import warn_if_versions_differ

__version__ = "0.1.0"

__all__ = [
    "LabkitError",
    "MissingPackageError",
    "build_random_model",
    "check",
    "detect_hardware",
    "list_configs",
    "load_config",
    "load_model",
    "measure_memory_bandwidth",
    "profile",
    "warn_if_versions_differ",
]
