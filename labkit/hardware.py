"""What the learner's machine is: device, GPU, VRAM, RAM, cores, Colab, online, bandwidth."""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import asdict, dataclass

import psutil

GIB = 1024**3


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda", "mps" or "cpu"
    gpu_name: str | None
    vram_total_bytes: int | None
    vram_free_bytes: int | None
    compute_capability: tuple[int, int] | None
    bf16_supported: bool
    ram_total_bytes: int
    ram_available_bytes: int
    cpu_cores: int
    in_colab: bool
    online: bool

    def summary(self) -> str:
        """A few readable lines, as the notebooks and `labkit doctor` print them."""
        lines = [f"device         : {self.device}"]
        if self.gpu_name:
            cc = ".".join(map(str, self.compute_capability)) if self.compute_capability else "n/a"
            lines.append(f"GPU            : {self.gpu_name} (compute capability {cc})")
        if self.vram_total_bytes:
            free = self.vram_free_bytes or 0
            lines.append(f"VRAM           : {self.vram_total_bytes / GIB:.1f} GiB total, {free / GIB:.1f} GiB free")
        lines += [
            f"bf16 supported : {self.bf16_supported}",
            f"RAM            : {self.ram_total_bytes / GIB:.1f} GiB total, {self.ram_available_bytes / GIB:.1f} GiB available",
            f"CPU cores      : {self.cpu_cores}",
            f"Colab          : {self.in_colab}",
            f"online         : {self.online}",
        ]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return asdict(self)


def is_online(host: str = "huggingface.co", port: int = 443, timeout_s: float = 1.5) -> bool:
    """True when the Hugging Face Hub is reachable and offline mode is not forced."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def detect_hardware(check_online: bool = True) -> Hardware:
    """Inspect this machine. Cheap (well under a second); the online probe waits at most 1.5 s."""
    import torch

    device, gpu_name, total, free, cc = "cpu", None, None, None, None
    bf16 = True  # CPUs run bf16 (slowly but correctly) in PyTorch
    if torch.cuda.is_available():
        device = "cuda"
        props = torch.cuda.get_device_properties(0)
        gpu_name = props.name
        free, total = torch.cuda.mem_get_info(0)
        cc = (props.major, props.minor)
        bf16 = torch.cuda.is_bf16_supported()
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        device = "mps"
        gpu_name = "Apple GPU (MPS)"
    vm = psutil.virtual_memory()
    return Hardware(
        device=device,
        gpu_name=gpu_name,
        vram_total_bytes=total,
        vram_free_bytes=free,
        compute_capability=cc,
        bf16_supported=bf16,
        ram_total_bytes=vm.total,
        ram_available_bytes=vm.available,
        cpu_cores=os.cpu_count() or 1,
        in_colab=in_colab(),
        online=is_online() if check_online else False,
    )


def measure_memory_bandwidth(device: str | None = None, size_mib: int = 256, repeats: int = 5) -> float:
    """Measured memory bandwidth in bytes/s: best of `repeats` copies of a `size_mib` buffer.

    A copy reads and writes every byte, so bytes moved = 2 x size. This is the number that
    bounds decode speed (every weight is read once per generated token).
    """
    import torch

    device = device or detect_hardware(check_online=False).device
    n = size_mib * 1024 * 1024 // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        elapsed = time.perf_counter() - start
        if i > 0:  # the first copy warms up caches and allocators
            best = min(best, elapsed)
    return 2 * n * 4 / best


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def gpu_table() -> list[dict]:
    """Common GPUs (datasets/gpus.json): name, vram_gb, bandwidth_gbps, fp16_tflops, bf16, source."""
    import json

    from .paths import datasets_dir

    return json.loads((datasets_dir() / "gpus.json").read_text())["gpus"]


def find_gpu(name: str) -> dict:
    """The gpus.json entry whose name contains `name` (case-insensitive), e.g. find_gpu('4090')."""
    from .errors import unknown

    matches = [g for g in gpu_table() if name.lower() in g["name"].lower()]
    if len(matches) != 1:
        exact = [g for g in matches if g["name"].lower() == name.lower()]
        if len(exact) == 1:
            return exact[0]
        raise unknown("GPU", name, [g["name"] for g in gpu_table()])
    return matches[0]
