import pytest

from labkit.errors import LabkitError
from labkit.hardware import detect_hardware, find_gpu, gpu_table, is_online, measure_memory_bandwidth
from labkit.profiles import PROFILES, profile


def test_detect_hardware_reports_this_machine():
    import os

    import psutil

    hw = detect_hardware(check_online=False)
    assert hw.device in ("cpu", "cuda", "mps")
    assert hw.cpu_cores == os.cpu_count()
    assert abs(hw.ram_total_bytes - psutil.virtual_memory().total) < 2**20
    assert "RAM" in hw.summary() and "CPU cores" in hw.summary()


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


def test_profile_follows_env_and_rejects_unknown(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "cpu")
    prof = profile()
    assert prof.name == "cpu" and prof.device == "cpu" and not prof.is_gpu
    assert prof.seq_lens == PROFILES["cpu"]["seq_lens"]
    monkeypatch.setenv("LABKIT_PROFILE", "tpu")
    with pytest.raises(LabkitError, match="'cpu', 'gpu'"):
        profile()


def test_gpu_profile_refused_without_cuda(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(LabkitError, match="needs a CUDA GPU"):
        profile("gpu")


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
    from labkit.errors import LabkitError
    from labkit.hardware import copy_rates

    with pytest.raises(LabkitError):
        copy_rates(**{"device": "cpu", "size_mib": 16, **kwargs})


def test_cpu_threads_follow_labkit_threads(monkeypatch):
    import os

    from labkit.errors import LabkitError
    from labkit.hardware import cpu_threads

    monkeypatch.delenv("LABKIT_THREADS", raising=False)
    assert cpu_threads() == (os.cpu_count() or 1)
    monkeypatch.setenv("LABKIT_THREADS", "1")
    assert cpu_threads() == 1
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv("LABKIT_THREADS", bad)
        with pytest.raises(LabkitError, match="LABKIT_THREADS must be a whole number"):
            cpu_threads()
