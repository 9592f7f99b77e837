"""labkit.versions: the tested versions, and the warning a kernel prints once when installed ones differ."""

import warnings

import labkit.versions as versions
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
