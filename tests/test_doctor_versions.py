import warnings
from dataclasses import replace

import labkit.versions as versions
from labkit.__main__ import main
from labkit.doctor import diagnose
from labkit.versions import VersionStatus, tested_versions


def test_tested_versions_pin_the_packages_that_drift():
    pins = tested_versions()
    for package in ("torch", "transformers", "peft", "llama-cpp-python", "gguf"):
        assert package in pins and pins[package].count(".") >= 1


def test_version_status():
    assert VersionStatus("x", "1.2.3", "1.2.3").status == "OK"
    assert VersionStatus("torch", "2.13.0", "2.13.0+cpu").status == "OK"
    assert VersionStatus("x", "1.2.3", "1.3.0").status == "WARN"
    assert VersionStatus("x", "1.2.3", None).status == "FAIL"


def test_warning_names_the_differing_package(monkeypatch):
    monkeypatch.setattr(versions, "_warned", False)
    monkeypatch.setattr(versions, "installed_version", lambda p: "0.0.1" if p == "peft" else tested_versions()[p])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        differing = versions.warn_if_versions_differ()
        versions.warn_if_versions_differ()  # only once per session
    assert [d.package for d in differing] == ["peft"]
    assert len(caught) == 1 and "peft 0.0.1 (tested" in str(caught[0].message)


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
