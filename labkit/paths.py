"""Where labkit finds its shipped data and keeps its cache."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir


def datasets_dir() -> Path:
    """The shipped `datasets/` folder: the checkout's copy when run from it, else the installed one."""
    override = os.environ.get("LABKIT_DATASETS")
    if override:
        return Path(override)
    checkout = Path(__file__).resolve().parent.parent / "datasets"
    if checkout.is_dir():
        return checkout
    # installed from a wheel: pyproject maps the checkout's datasets/ to the package labkit.datasets
    return Path(__file__).resolve().parent / "datasets"


def cache_dir() -> Path:
    """labkit's cache (dense copies of the bundled model, measurements). Override with LABKIT_CACHE."""
    path = Path(os.environ.get("LABKIT_CACHE") or user_cache_dir("labkit"))
    path.mkdir(parents=True, exist_ok=True)
    return path
