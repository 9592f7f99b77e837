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
    vram_total_bytes: int | None  # what labkit may use: the card's memory, or LABKIT_GPU_MEMORY when that is less
    vram_free_bytes: int | None  # of that, what is free now
    compute_capability: tuple[int, int] | None
    bf16_supported: bool
    ram_total_bytes: int
    ram_available_bytes: int
    cpu_cores: int
    in_colab: bool
    online: bool
    vram_card_bytes: int | None = None  # the card's own memory as CUDA shows it (= vram_total_bytes unless capped)
    gpu_memory_cap_bytes: int | None = None  # LABKIT_GPU_MEMORY, when set
    unified_memory: bool = False  # Apple silicon: CPU and GPU share one memory (vram_* is the GPU's working set)
    # llama.cpp's GPU backend in this llama-cpp-python build: "CUDA", "Metal" or "none"; None = not checked (llama_cpp
    # is looked at only once something imported it: importing it initialises its GPU backend beside torch's)
    llama_cpp_gpu: str | None = None

    def summary(self) -> str:
        """A few readable lines, as the notebooks and `labkit doctor` print them."""
        lines = [f"device         : {self.device}"]
        if self.gpu_name:
            cc = ".".join(map(str, self.compute_capability)) if self.compute_capability else "n/a"
            lines.append(f"GPU            : {self.gpu_name}" + (f" (compute capability {cc})" if self.device == "cuda" else ""))
        if self.vram_total_bytes:
            free = self.vram_free_bytes or 0
            kind = "GPU memory (unified, the GPU's share)" if self.unified_memory else "VRAM"
            capped = ""
            if self.gpu_memory_cap_bytes and self.vram_card_bytes and self.vram_card_bytes > self.vram_total_bytes:
                capped = f" (capped by LABKIT_GPU_MEMORY; the card has {self.vram_card_bytes / GIB:.1f} GiB)"
            lines.append(f"{kind:<15}: {self.vram_total_bytes / GIB:.1f} GiB total, {free / GIB:.1f} GiB free{capped}")
        lines += [
            f"bf16 supported : {self.bf16_supported}",
            f"RAM            : {self.ram_total_bytes / GIB:.1f} GiB total, {self.ram_available_bytes / GIB:.1f} GiB available",
            f"CPU cores      : {self.cpu_cores}",
            f"llama.cpp GPU  : {_LLAMA_CPP_GPU_TEXT.get(self.llama_cpp_gpu, self.llama_cpp_gpu)}",
            f"Colab          : {self.in_colab}",
            f"online         : {self.online}",
        ]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return asdict(self)


_LLAMA_CPP_GPU_TEXT = {"none": "none (a CPU build)", None: "not checked (llama_cpp not imported yet)"}


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


_MEMORY_UNITS = {"gib": GIB, "gb": 10**9, "mib": 2**20, "mb": 10**6}


def gpu_memory_cap() -> int | None:
    """LABKIT_GPU_MEMORY in bytes, or None when unset: the most GPU memory labkit treats as there, e.g. "15GiB"
    (a T4's worth), "7.5GiB", "8GB", "12000MiB"; a bare number is GiB. On a bigger card it makes the course behave
    as on a small one: profiles, fit verdicts and llama.cpp's layer split use it, and torch's allocator is held to
    it (torch.cuda.set_per_process_memory_fraction)."""
    import re

    text = os.environ.get("LABKIT_GPU_MEMORY", "").strip()
    if not text:
        return None
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(gib|gb|mib|mb)?", text.lower())
    if not found or float(found.group(1)) <= 0:
        from .errors import LabkitError

        raise LabkitError(f"LABKIT_GPU_MEMORY must be an amount of memory such as 15GiB, 7.5GiB, 16GB or 12000MiB "
                          f"(a bare number is GiB), got {text!r}")
    return int(float(found.group(1)) * _MEMORY_UNITS[found.group(2) or "gib"])


_TORCH_CAP = {"fraction": None}


def cap_torch_cuda_memory(cap_bytes: int | None, card_bytes: int) -> float | None:
    """Hold torch's CUDA allocator to `cap_bytes` of the card (once per process; a later, different cap replaces
    it). Returns the fraction set, or None without a cap. Allocations past it raise torch.OutOfMemoryError, as on a
    card of that size."""
    import torch

    if not cap_bytes or cap_bytes >= card_bytes:
        return None
    fraction = cap_bytes / card_bytes
    if _TORCH_CAP["fraction"] != fraction:
        torch.cuda.set_per_process_memory_fraction(fraction, 0)
        _TORCH_CAP["fraction"] = fraction
    return fraction


def llama_cpp_gpu_backend() -> str | None:
    """The GPU backend of the installed llama-cpp-python: "CUDA", "Metal" (Apple silicon) or None (a CPU build, or
    not installed). `llama_supports_gpu_offload` says whether there is one; the platform says which."""
    try:
        import llama_cpp
    except ImportError:
        return None
    if not llama_cpp.llama_supports_gpu_offload():
        return None
    if is_apple_silicon():
        return "Metal"
    return "CUDA"


def is_apple_silicon() -> bool:
    import platform

    return platform.system() == "Darwin" and platform.machine() == "arm64"


def apple_gpu_working_set(ram_total_bytes: int) -> int:
    """The unified memory Metal lets the GPU use on Apple silicon: torch.mps.recommended_max_memory() where torch
    has it, else macOS's default working-set limit (about 2/3 of memory up to 36 GB, 3/4 above)."""
    import torch

    recommended = getattr(getattr(torch, "mps", None), "recommended_max_memory", None)
    if recommended is not None:
        try:
            return int(recommended())
        except Exception:  # older macOS / torch builds: fall back to the documented default
            pass
    share = 0.75 if ram_total_bytes > 36 * GIB else 2 / 3
    return int(ram_total_bytes * share)


def detect_hardware(check_online: bool = True) -> Hardware:
    """Inspect this machine. Cheap (well under a second); the online probe waits at most 1.5 s.

    With LABKIT_GPU_MEMORY set, a GPU's memory is reported (and torch's allocator held) at that cap."""
    import torch

    device, gpu_name, total, free, cc, card = "cpu", None, None, None, None, None
    bf16 = True  # CPUs run bf16 (slowly but correctly) in PyTorch
    cap = gpu_memory_cap()
    unified = False
    vm = psutil.virtual_memory()
    if torch.cuda.is_available():
        device = "cuda"
        props = torch.cuda.get_device_properties(0)
        gpu_name = props.name
        free, card = torch.cuda.mem_get_info(0)
        cc = (props.major, props.minor)
        bf16 = torch.cuda.is_bf16_supported()
        total = card
        if cap and cap < card:
            cap_torch_cuda_memory(cap, card)
            total = cap
            free = max(0, min(free, cap - torch.cuda.memory_reserved(0)))
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        device, unified = "mps", True
        bf16 = _mps_supports_bf16()
        gpu_name = f"Apple GPU (MPS, {_apple_chip_name()})"
        card = apple_gpu_working_set(vm.total)
        total = min(card, cap) if cap else card
        in_use = int(getattr(torch.mps, "driver_allocated_memory", lambda: 0)())
        free = max(0, min(total - in_use, vm.available))
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
        vram_card_bytes=card,
        gpu_memory_cap_bytes=cap,
        unified_memory=unified,
        llama_cpp_gpu=(llama_cpp_gpu_backend() or "none") if "llama_cpp" in sys.modules else None,
    )


def _mps_supports_bf16() -> bool:
    """MPS runs bf16 from macOS 14 on; earlier it refuses to make such a tensor."""
    import torch

    try:
        torch.ones(1, dtype=torch.bfloat16, device="mps")
        return True
    except (RuntimeError, TypeError):
        return False


def _apple_chip_name() -> str:
    """"Apple M2 Pro" or the like (sysctl's brand string); "Apple silicon" when it cannot be read."""
    import subprocess

    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "Apple silicon"
    except (OSError, subprocess.SubprocessError):
        return "Apple silicon"


def cpu_threads() -> int:
    """Threads labkit gives llama.cpp and torch on the CPU: all cores, or LABKIT_THREADS when set. `make test`
    runs two notebooks at once on CI's 2 cores and sets it to 1: llama.cpp's threads spin while they wait, so two
    processes of 2 threads each on 2 cores ran some cells 5x slower than one process alone."""
    wanted = os.environ.get("LABKIT_THREADS", "").strip()
    if wanted:
        if not wanted.isdigit() or int(wanted) < 1:
            from .errors import LabkitError

            raise LabkitError(f"LABKIT_THREADS must be a whole number of 1 or more, got {wanted!r}")
        return int(wanted)
    return os.cpu_count() or 1


def copy_rates(device: str | None = None, size_mib: int = 256, runs: int = 5) -> list[float]:
    """Bytes/s of each of `runs` timed copies of a `size_mib` buffer (after one untimed warm-up copy).

    A copy reads and writes every byte, so bytes moved = 2 x size. This is the number that
    bounds decode speed (every weight is read once per generated token).
    """
    import torch

    from .errors import LabkitError

    device = device or detect_hardware(check_online=False).device
    if device not in ("cpu", "cuda", "mps"):
        from .errors import unknown

        raise unknown("device", device, ("cpu", "cuda", "mps"))
    if isinstance(size_mib, bool) or not isinstance(size_mib, int) or size_mib <= 0:
        raise LabkitError(f"size_mib must be a positive whole number of MiB, got {size_mib!r}")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs <= 0:
        raise LabkitError(f"runs must be a positive whole number, got {runs!r}")
    n = size_mib * 1024 * 1024 // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    rates = []
    for i in range(runs + 1):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        elapsed = time.perf_counter() - start
        if i > 0:  # the first copy warms up caches and allocators
            rates.append(2 * n * 4 / elapsed)
    return rates


def measure_memory_bandwidth(device: str | None = None, size_mib: int = 256, repeats: int = 5) -> float:
    """Measured memory bandwidth in bytes/s: the fastest of `repeats` copies of a `size_mib` buffer.

    One quick number. The notebooks use `session_bandwidth()` instead: the median of several copies,
    measured once and then reused, so every notebook quotes the same figure.
    """
    return max(copy_rates(device, size_mib, repeats))


@dataclass(frozen=True)
class Bandwidth:
    """Memory bandwidth measured once per session: the median copy, with the spread of all copies."""

    device: str
    median: float  # bytes/s
    low: float  # slowest copy, bytes/s
    high: float  # fastest copy, bytes/s
    runs: int
    size_mib: int
    measured_at: float  # seconds since the epoch
    cached: bool = False  # True when read back from labkit's cache instead of measured now

    def __float__(self) -> float:
        return self.median

    @property
    def spread(self) -> float:
        """(fastest - slowest) / median: how much single copies disagree on this machine."""
        return (self.high - self.low) / self.median

    def __str__(self) -> str:
        when = time.strftime("%H:%M", time.localtime(self.measured_at))
        how = f"cached from {when}" if self.cached else f"measured now ({when})"
        return (f"{self.median / 1e9:,.1f} GB/s on {self.device}: median of {self.runs} copies of "
                f"{self.size_mib} MiB, single copies {self.low / 1e9:,.1f} to {self.high / 1e9:,.1f} GB/s "
                f"({self.spread:.0%} spread); {how}")


BANDWIDTH_MAX_AGE_S = 12 * 3600  # a cached measurement older than this is measured again


def session_bandwidth(device: str | None = None, refresh: bool = False, size_mib: int | None = None, runs: int = 9,
                      max_age_s: float = BANDWIDTH_MAX_AGE_S) -> Bandwidth:
    """This machine's memory bandwidth, measured once and reused by every notebook.

    The first call times `runs` copies and keeps their median (single copies swing by tens of percent
    on a shared or busy machine); it stores the result in labkit's cache directory. Later calls, in this
    or any other notebook, read it back until the machine restarts or `max_age_s` passes. `refresh=True`
    measures again (and stores the new result).
    """
    import json
    import statistics

    from .paths import cache_dir

    device = device or detect_hardware(check_online=False).device
    size_mib = size_mib or (1024 if device == "cuda" else 256)  # a GPU copies 256 MiB in well under a millisecond
    key = _bandwidth_key(device)
    path = cache_dir() / "bandwidth.json"
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    entry = stored.get(key)
    fresh = entry and time.time() - entry["measured_at"] < max_age_s and entry["measured_at"] > psutil.boot_time()
    if fresh and not refresh:
        return Bandwidth(**{**entry, "cached": True})
    rates = copy_rates(device, size_mib, runs)
    result = Bandwidth(device, statistics.median(rates), min(rates), max(rates), runs, size_mib, time.time())
    stored[key] = {k: v for k, v in asdict(result).items() if k != "cached"}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(stored, indent=1))
    os.replace(tmp, path)  # atomic: two notebooks starting together never read half a file
    return result


def _bandwidth_key(device: str) -> str:
    """One cache entry per machine and device (the cache folder may be shared between machines)."""
    if device == "cuda":
        import torch

        what = torch.cuda.get_device_name(0)
    else:
        what = f"{os.cpu_count()} cores"
    return f"{socket.gethostname()}|{device}|{what}"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


# Fit verdicts keep this share of the memory a card shows free. It covers what the estimate does not see:
# the caching allocator's fragmentation (freed blocks that do not fit the next request), other processes
# on the card (a desktop, a second notebook), and the estimate's own error (worst -3.6% against an H100,
# notebook 03).
SAFETY_MARGIN = 0.05


@dataclass(frozen=True)
class UsableMemory:
    """The memory a fit verdict compares against: what the device shows, less the safety margin."""

    where: str
    shown_bytes: float  # what CUDA reports for a GPU (or the free memory of this machine)
    margin: float

    @property
    def bytes(self) -> float:
        return self.shown_bytes * (1 - self.margin)

    def __str__(self) -> str:
        return (f"{self.where}: {self.shown_bytes / GIB:.1f} GiB shown, {self.bytes / GIB:.1f} GiB usable "
                f"(keeping {self.margin:.0%} free)")


def shown_gib(gpu: dict) -> float:
    """GiB a card shows to CUDA (`cuda_gib` in gpus.json), which is less than the size it is sold with."""
    return float(gpu.get("cuda_gib") or gpu["vram_gb"])


def usable_memory(device_or_gb=None, margin: float = SAFETY_MARGIN) -> UsableMemory:
    """What a model may use on `device_or_gb`, the one rule behind every fit verdict in the course.

    - a GPU name from datasets/gpus.json ("T4", "4090", "A100 40GB") or its entry: the GiB the card shows
      to CUDA (a T4 sold as 16 GB shows 14.6 GiB: ECC takes 6.25% of its GDDR6);
    - a number: GiB as the device shows them (what `torch.cuda.mem_get_info` or `free -g` says);
    - None or "this": this machine's free VRAM (GPU) or available RAM (CPU).
    In each case `margin` (5% by default) stays free, for the reasons given at SAFETY_MARGIN.
    """
    from .errors import LabkitError, require_positive

    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise LabkitError(f"margin must be a fraction between 0 and 1 (0.05 keeps 5% free), got {margin!r}")
    if device_or_gb is None or device_or_gb in ("this", "auto", "yours"):
        hw = detect_hardware(check_online=False)
        capped = " under LABKIT_GPU_MEMORY" if hw.gpu_memory_cap_bytes else ""
        if hw.device == "cuda":
            return UsableMemory(f"this GPU ({hw.gpu_name}, free{capped})", float(hw.vram_free_bytes), margin)
        if hw.device == "mps":
            return UsableMemory(f"this Mac's GPU share of unified memory (free{capped})", float(hw.vram_free_bytes),
                                margin)
        return UsableMemory("this machine's available RAM", float(hw.ram_available_bytes), margin)
    if isinstance(device_or_gb, dict):
        return UsableMemory(device_or_gb["name"], shown_gib(device_or_gb) * GIB, margin)
    if isinstance(device_or_gb, str):
        gpu = find_gpu(device_or_gb)
        return UsableMemory(gpu["name"], shown_gib(gpu) * GIB, margin)
    require_positive("memory (GiB)", device_or_gb)
    return UsableMemory(f"{device_or_gb:g} GiB", float(device_or_gb) * GIB, margin)


def gpu_table() -> list[dict]:
    """Common GPUs (datasets/gpus.json): name, vram_gb (as sold), cuda_gib (as CUDA shows it, with its
    source), bandwidth_gbps, fp16_tflops, bf16, source."""
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
