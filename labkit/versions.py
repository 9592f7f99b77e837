"""The package versions the course is tested with, and a warning when the learner's differ.

Version drift (transformers, peft, llama.cpp) breaks LLM courses more than anything else, so the
tested versions live in one file, `labkit/tested_versions.txt`, which the Makefile also uses as a
pip constraints file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib import metadata
from importlib.resources import files

from packaging.version import InvalidVersion, Version

_warned = False


def tested_versions() -> dict[str, str]:
    """Package name -> the exact version the course was tested with."""
    text = files("labkit").joinpath("tested_versions.txt").read_text()
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip()] = version.strip()
    return pins


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class VersionStatus:
    package: str
    tested: str
    installed: str | None

    @property
    def status(self) -> str:
        """OK (same release), WARN (installed but different), FAIL (missing)."""
        if self.installed is None:
            return "FAIL"
        try:
            same = Version(self.installed).release == Version(self.tested).release
        except InvalidVersion:
            same = self.installed == self.tested
        return "OK" if same else "WARN"


def compare_versions() -> list[VersionStatus]:
    return [VersionStatus(p, v, installed_version(p)) for p, v in tested_versions().items()]


def warn_if_versions_differ(packages: tuple[str, ...] = ("torch", "transformers", "peft", "bitsandbytes", "llama-cpp-python", "gguf")) -> list[VersionStatus]:
    """Warn once per session about installed versions that differ from the tested ones."""
    global _warned
    differing = [s for s in compare_versions() if s.package in packages and s.status == "WARN"]
    if differing and not _warned:
        _warned = True
        lines = ", ".join(f"{s.package} {s.installed} (tested {s.tested})" for s in differing)
        warnings.warn(
            f"LLM Field Lab was tested with other versions than yours: {lines}. "
            "Most things still work; if a cell breaks, run `make lab` in the course folder "
            "or `pip install -c labkit/tested_versions.txt -e .` to get the tested set.",
            stacklevel=2,
        )
    return differing
