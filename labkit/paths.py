"""Where labkit finds its shipped data and keeps its cache.

Everything a notebook reads ships inside the package: the checkout's `datasets/` folder (real model configs,
the catalog, GPU and price tables, texts, and `datasets/results/`, the committed GPU benchmark results) is the
package `labkit.datasets` in the wheel (pyproject.toml). labkit reads those files only through this module, so a
`pip install` (Colab) sees exactly what a checkout sees; tests/test_paths.py builds the wheel and checks it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from platformdirs import user_cache_dir

_PACKAGE = Path(__file__).resolve().parent
REPO_URL = "https://github.com/llm-field-lab/llm-field-lab"
# What a pip user installs: every notebook's Colab cell (labkit.course.COLAB_CELL) and README's pip line say exactly
# this, and `make notebooks` runs the notebooks on labkit built as a wheel with these extras
# (tests/test_project.py keeps the three in step).
EXTRAS = "lab,llama"
PIP_REQUIREMENT = f"labkit[{EXTRAS}] @ git+{REPO_URL}"
PIP_INSTALL = f'pip install "{PIP_REQUIREMENT}"'


def _checkout_datasets() -> Path | None:
    """The checkout's datasets/ when labkit runs from its source tree (editable install or PYTHONPATH), else None.

    Recognised by the project's own files, not by the folder's name: next to an installed labkit in
    site-packages there may be another package called `datasets` (Hugging Face's, preinstalled on Colab)."""
    root = _PACKAGE.parent
    if (root / "pyproject.toml").is_file() and (root / "datasets" / "catalog.yaml").is_file():
        return root / "datasets"
    return None


def datasets_dir() -> Path:
    """The shipped data: the checkout's `datasets/` when run from it, else the installed `labkit/datasets`.
    LABKIT_DATASETS overrides both."""
    override = os.environ.get("LABKIT_DATASETS")
    if override:
        return Path(override)
    return _checkout_datasets() or _PACKAGE / "datasets"


def results_dir() -> Path:
    """The committed GPU benchmark results (`datasets/results/`: JSON and Markdown written by benchmarks/*.py)."""
    return datasets_dir() / "results"


def shipped_file(*parts: str) -> Path:
    """A file of the shipped data, e.g. shipped_file("results", "attention_gpu.json"). A missing one is a broken
    install, never a normal state: say which file and how to repair it."""
    path = datasets_dir().joinpath(*parts)
    if not path.is_file():
        from .errors import LabkitError

        raise LabkitError(
            f"labkit's shipped data has no {'/'.join(parts)} (looked in {path.parent}). This install is incomplete: "
            f"reinstall labkit (`{PIP_INSTALL} --force-reinstall`) or, in a checkout, check `git status datasets/`.")
    return path


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock named `name` in labkit's cache while making something there, so that two processes
    (parallel test workers, two notebooks) wanting the same file make it once: the second waits, then finds it.
    Where the OS has no flock (Windows), no lock: each process then makes its own copy, as before."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(cache_dir() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cache_dir() -> Path:
    """labkit's cache (dense copies of the bundled model, measurements). Override with LABKIT_CACHE."""
    path = Path(os.environ.get("LABKIT_CACHE") or user_cache_dir("labkit"))
    path.mkdir(parents=True, exist_ok=True)
    return path
