"""labkit.hardware: what this machine is, and the same detection on mocked machines (a CUDA card with and without
LABKIT_GPU_MEMORY, Apple silicon with MPS and a Metal llama.cpp), so every path runs on CI's CPU."""

import os
import sys
import types

import psutil
import pytest
import torch

from labkit import hardware
from labkit.errors import LabkitError
from labkit.hardware import GIB, detect_hardware, find_gpu, gpu_table, is_online, measure_memory_bandwidth


@pytest.fixture(autouse=True)
def no_cap_from_the_caller(monkeypatch):
    """A LABKIT_GPU_MEMORY of whoever runs the tests must not change what they detect; the tests set their own."""
    monkeypatch.delenv("LABKIT_GPU_MEMORY", raising=False)


def test_detect_hardware_reports_this_machine():
    hw = detect_hardware(check_online=False)
    assert hw.device in ("cpu", "cuda", "mps")
    assert hw.cpu_cores == os.cpu_count()
    assert abs(hw.ram_total_bytes - psutil.virtual_memory().total) < 2**20
    assert "RAM" in hw.summary() and "CPU cores" in hw.summary() and "llama.cpp GPU" in hw.summary()
    assert hw.llama_cpp_gpu in ("CUDA", "Metal", "none", None)


def test_offline_mode_is_respected(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_online() is False


def test_measured_bandwidth_is_plausible():
    bw = measure_memory_bandwidth("cpu", size_mib=64, repeats=3)
    assert 1e8 < bw < 5e12  # between 0.1 GB/s and 5 TB/s


def test_gpu_table_has_the_gpus_the_course_compares():
    names = [g["name"] for g in gpu_table()]
    for wanted in ("T4", "3060", "4090", "A100 40GB", "A100 80GB", "H100"):
        assert any(wanted in n for n in names), wanted
    assert all(g["source"] and g["bandwidth_gbps"] > 0 and g["vram_gb"] > 0 for g in gpu_table())


def test_find_gpu_by_part_of_its_name_and_rejects_unknown():
    assert find_gpu("4090")["vram_gb"] == 24
    assert find_gpu("A100 80GB")["bandwidth_gbps"] == 2039
    with pytest.raises(LabkitError, match="Accepted"):
        find_gpu("Voodoo 3")
    with pytest.raises(LabkitError):
        find_gpu("A100")  # ambiguous: 40 GB or 80 GB


def test_session_bandwidth_is_measured_once_then_reused(tmp_path, monkeypatch):
    from labkit.hardware import session_bandwidth

    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    first = session_bandwidth("cpu", size_mib=16, runs=5)
    assert not first.cached and first.runs == 5
    assert first.low <= first.median <= first.high and first.median > 1e8
    assert first.spread == pytest.approx((first.high - first.low) / first.median)
    again = session_bandwidth("cpu", size_mib=16, runs=5)
    assert again.cached and again.median == first.median and again.measured_at == first.measured_at
    assert "cached" in str(again) and "median of 5 copies" in str(again)
    fresh = session_bandwidth("cpu", refresh=True, size_mib=16, runs=3)
    assert not fresh.cached and fresh.runs == 3
    assert session_bandwidth("cpu").runs == 3  # the refreshed result is the one stored
    old = session_bandwidth("cpu", size_mib=16, runs=3, max_age_s=0)  # too old: measured again
    assert not old.cached


def test_session_bandwidth_survives_a_broken_cache_file(tmp_path, monkeypatch):
    from labkit.hardware import session_bandwidth

    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    (tmp_path / "bandwidth.json").write_text("{not json")
    assert not session_bandwidth("cpu", size_mib=16, runs=3).cached
    assert session_bandwidth("cpu").cached


@pytest.mark.parametrize("kwargs", [dict(device="tpu"), dict(size_mib=0), dict(runs=0), dict(runs=2.5)])
def test_copy_rates_refuses_bad_input(kwargs):
    from labkit.hardware import copy_rates

    with pytest.raises(LabkitError):
        copy_rates(**{"device": "cpu", "size_mib": 16, **kwargs})


def test_cpu_threads_follow_labkit_threads(monkeypatch):
    from labkit.hardware import cpu_threads

    monkeypatch.delenv("LABKIT_THREADS", raising=False)
    assert cpu_threads() == (os.cpu_count() or 1)
    monkeypatch.setenv("LABKIT_THREADS", "1")
    assert cpu_threads() == 1
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv("LABKIT_THREADS", bad)
        with pytest.raises(LabkitError, match="LABKIT_THREADS must be a whole number"):
            cpu_threads()


# ----------------------------------------------------------------------------- LABKIT_GPU_MEMORY


@pytest.mark.parametrize("text, expected", [("15GiB", 15 * GIB), ("7.5GiB", int(7.5 * GIB)), ("16GB", 16 * 10**9),
                                            ("12000MiB", 12000 * 2**20), ("8", 8 * GIB), (" 7.5 gib ", int(7.5 * GIB))])
def test_gpu_memory_cap_reads_the_amounts_people_write(monkeypatch, text, expected):
    monkeypatch.setenv("LABKIT_GPU_MEMORY", text)
    assert hardware.gpu_memory_cap() == expected


@pytest.mark.parametrize("text", ["lots", "-4GiB", "0", "15 TB", "GiB"])
def test_a_bad_gpu_memory_cap_says_what_is_accepted(monkeypatch, text):
    monkeypatch.setenv("LABKIT_GPU_MEMORY", text)
    with pytest.raises(LabkitError, match="LABKIT_GPU_MEMORY must be an amount of memory such as 15GiB"):
        hardware.gpu_memory_cap()


def test_no_cap_without_the_variable(monkeypatch):
    monkeypatch.delenv("LABKIT_GPU_MEMORY", raising=False)
    assert hardware.gpu_memory_cap() is None


class FakeCuda:
    """torch.cuda of an NVIDIA card of `card_gib` with `used_gib` already in use by this process."""

    def __init__(self, name="NVIDIA H100 80GB HBM3", card_gib=79.18, used_gib=0.5, cc=(9, 0)):
        self.name, self.card, self.used, self.cc = name, int(card_gib * GIB), int(used_gib * GIB), cc
        self.fractions: list[float] = []

    def install(self, monkeypatch):
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "get_device_properties",
                            lambda i=0: types.SimpleNamespace(name=self.name, major=self.cc[0], minor=self.cc[1],
                                                              total_memory=self.card))
        monkeypatch.setattr(cuda, "mem_get_info", lambda i=0: (self.card - self.used, self.card))
        monkeypatch.setattr(cuda, "is_bf16_supported", lambda *a, **k: True)
        monkeypatch.setattr(cuda, "memory_reserved", lambda i=0: self.used)
        monkeypatch.setattr(cuda, "set_per_process_memory_fraction", lambda f, i=0: self.fractions.append(f))
        monkeypatch.setattr(hardware, "_TORCH_CAP", {"fraction": None})
        monkeypatch.setattr(hardware, "llama_cpp_gpu_backend", lambda: "CUDA")
        return self


def test_a_cuda_card_is_reported_whole_without_a_cap(monkeypatch):
    monkeypatch.delenv("LABKIT_GPU_MEMORY", raising=False)
    fake = FakeCuda(card_gib=14.58, name="Tesla T4", cc=(7, 5)).install(monkeypatch)
    hw = detect_hardware(check_online=False)
    assert hw.device == "cuda" and hw.gpu_name == "Tesla T4" and hw.compute_capability == (7, 5)
    assert hw.vram_total_bytes == hw.vram_card_bytes == fake.card and hw.gpu_memory_cap_bytes is None
    assert fake.fractions == [] and "capped" not in hw.summary()


def test_a_cap_makes_a_big_card_look_small_to_labkit_and_to_torch(monkeypatch):
    """LABKIT_GPU_MEMORY=15GiB on an H100: labkit sees 15 GiB (free: the cap less what this process holds), and
    torch's allocator is held to the same share of the card."""
    monkeypatch.setenv("LABKIT_GPU_MEMORY", "15GiB")
    fake = FakeCuda(card_gib=79.18, used_gib=0.5).install(monkeypatch)
    hw = detect_hardware(check_online=False)
    assert hw.vram_total_bytes == 15 * GIB and hw.vram_card_bytes == fake.card
    assert hw.vram_free_bytes == 15 * GIB - fake.used
    assert fake.fractions == [pytest.approx(15 * GIB / fake.card)]
    assert "capped by LABKIT_GPU_MEMORY; the card has 79.2 GiB" in hw.summary()
    detect_hardware(check_online=False)
    assert len(fake.fractions) == 1, "the same cap is set once per process"
    usable = hardware.usable_memory()
    assert usable.shown_bytes == hw.vram_free_bytes and "LABKIT_GPU_MEMORY" in usable.where


def test_a_cap_above_the_card_changes_nothing(monkeypatch):
    monkeypatch.setenv("LABKIT_GPU_MEMORY", "100GiB")
    fake = FakeCuda(card_gib=23.64, name="NVIDIA GeForce RTX 4090").install(monkeypatch)
    hw = detect_hardware(check_online=False)
    assert hw.vram_total_bytes == fake.card and fake.fractions == []


# ----------------------------------------------------------------------------- Apple silicon


def install_apple_silicon(monkeypatch, ram_gib: float = 16, recommended_gib: float | None = 10.7,
                          metal_llama_cpp: bool = True) -> None:
    """A Mac with an M-series chip: no CUDA, MPS available, macOS on arm64, unified memory of `ram_gib`."""
    import platform

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    vm = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory",
                        lambda: vm._replace(total=int(ram_gib * GIB), available=int(ram_gib * GIB * 0.6)))
    mps = types.SimpleNamespace(driver_allocated_memory=lambda: 0)
    if recommended_gib is not None:
        mps.recommended_max_memory = lambda: int(recommended_gib * GIB)
    monkeypatch.setattr(torch, "mps", mps)
    monkeypatch.setattr(hardware, "_mps_supports_bf16", lambda: True)
    monkeypatch.setattr(hardware, "_apple_chip_name", lambda: "Apple M2")
    fake_llama = types.SimpleNamespace(llama_supports_gpu_offload=lambda: metal_llama_cpp)
    monkeypatch.setitem(sys.modules, "llama_cpp", fake_llama)


def test_apple_silicon_is_detected_with_unified_memory_mps_and_metal(monkeypatch):
    install_apple_silicon(monkeypatch, ram_gib=16, recommended_gib=10.7)
    hw = detect_hardware(check_online=False)
    assert hw.device == "mps" and hw.unified_memory and hw.gpu_name == "Apple GPU (MPS, Apple M2)"
    assert hw.vram_total_bytes == int(10.7 * GIB)  # the GPU's working set, not all 16 GiB
    assert hw.llama_cpp_gpu == "Metal" and hw.compute_capability is None
    assert "unified" in hw.summary() and "Metal" in hw.summary()
    usable = hardware.usable_memory()
    assert "unified memory" in usable.where and usable.shown_bytes <= hw.ram_available_bytes


def test_apple_silicon_without_torch_recommended_max_uses_macos_default_share(monkeypatch):
    install_apple_silicon(monkeypatch, ram_gib=64, recommended_gib=None)
    assert detect_hardware(check_online=False).vram_total_bytes == int(64 * GIB * 0.75)
    install_apple_silicon(monkeypatch, ram_gib=16, recommended_gib=None)
    assert detect_hardware(check_online=False).vram_total_bytes == int(16 * GIB * 2 / 3)


def test_a_cap_applies_to_the_macs_gpu_share_too(monkeypatch):
    install_apple_silicon(monkeypatch, ram_gib=32, recommended_gib=21.3)
    monkeypatch.setenv("LABKIT_GPU_MEMORY", "7.5GiB")
    hw = detect_hardware(check_online=False)
    assert hw.vram_total_bytes == int(7.5 * GIB) and hw.vram_card_bytes == int(21.3 * GIB)


def test_a_cpu_build_of_llama_cpp_on_a_mac_has_no_gpu_backend(monkeypatch):
    install_apple_silicon(monkeypatch, metal_llama_cpp=False)
    assert detect_hardware(check_online=False).llama_cpp_gpu == "none"
    assert "none (a CPU build)" in detect_hardware(check_online=False).summary()


def test_a_cuda_build_of_llama_cpp_is_named(monkeypatch):
    import platform

    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(llama_supports_gpu_offload=lambda: True))
    assert hardware.llama_cpp_gpu_backend() == "CUDA"


def test_detecting_the_hardware_does_not_import_llama_cpp():
    """Importing llama_cpp initialises its GPU backend; notebooks that never run llama.cpp (01, 03, 06) must not get it
    beside torch's CUDA just by asking what the machine is (a CUDA llama.cpp and torch in one process crashed on the
    GPU image before, see benchmarks/gpu_course_run.py libstdcxx_preload)."""
    import subprocess

    code = ("import sys, labkit.hardware as h; hw = h.detect_hardware(check_online=False); "
            "print('llama_cpp' in sys.modules, hw.llama_cpp_gpu)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "None"]
