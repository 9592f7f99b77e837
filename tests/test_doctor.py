"""labkit.doctor and `labkit doctor`: one finding per dependency and for the machine; FAIL only for what the
course cannot run without."""

from dataclasses import replace

import labkit.versions as versions
from labkit.__main__ import main
from labkit.doctor import diagnose
from labkit.versions import tested_versions


def test_doctor_reports_each_dependency_and_the_machine():
    findings = diagnose(check_online=False)
    whats = [f.what for f in findings]
    assert set(tested_versions()) <= set(whats)
    assert {"device", "profile", "bundled model", "online"} <= set(whats)
    assert all(f.status in ("OK", "WARN", "FAIL", "INFO") for f in findings)


def test_doctor_fails_when_a_core_package_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(versions, "installed_version", lambda p: None if p == "transformers" else tested_versions()[p])
    import labkit.doctor as doctor_module

    monkeypatch.setattr(doctor_module, "compare_versions", versions.compare_versions)
    assert main(["doctor", "--offline"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] transformers" in out and "pip install transformers==" in out


def test_doctor_only_warns_when_an_extra_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(versions, "installed_version", lambda p: None if p == "nbmake" else tested_versions()[p])
    import labkit.doctor as doctor_module

    monkeypatch.setattr(doctor_module, "compare_versions", versions.compare_versions)
    assert main(["doctor", "--offline"]) == 0
    assert "[WARN] nbmake" in capsys.readouterr().out


def test_doctor_does_not_ask_for_gpu_only_packages_without_a_gpu(monkeypatch):
    import labkit.doctor as doctor_module
    from labkit import hardware

    monkeypatch.setattr(versions, "installed_version", lambda p: None if p == "bitsandbytes" else tested_versions()[p])
    monkeypatch.setattr(doctor_module, "compare_versions", versions.compare_versions)
    real = hardware.detect_hardware(check_online=False)
    for device, expected in (("cpu", "INFO"), ("cuda", "WARN")):
        monkeypatch.setattr(hardware, "detect_hardware", lambda check_online=True, d=device: replace(real, device=d))
        found = {f.what: f for f in diagnose(check_online=False)}["bitsandbytes"]
        assert found.status == expected, (device, found)
        assert ("pip install bitsandbytes==" in found.detail) == (device == "cuda")
