"""labkit.imatrix: finding llama.cpp's tools, calibrating, quantizing with the imatrix, and what it buys."""

import os

import pytest

from labkit import imatrix, quant
from labkit.errors import LabkitError


def fake_tools(folder, monkeypatch, script: str) -> None:
    """Every llama.cpp tool imatrix needs, as a shell script in `folder`, which LABKIT_LLAMA_TOOLS then names."""
    for name in imatrix.TOOLS:
        tool = folder / name
        tool.write_text(script)
        tool.chmod(0o755)
    monkeypatch.setenv(imatrix.TOOLS_ENV, str(folder))

def test_missing_tools_say_how_to_get_them(monkeypatch):
    monkeypatch.setattr(imatrix, "find_tool", lambda name: None)
    message = imatrix.missing_tools()
    assert "llama-imatrix and llama-quantize are not installed" in message and "make setup" in message
    with pytest.raises(LabkitError, match="brew install llama.cpp"):
        imatrix.build_imatrix()


def test_the_tools_folder_setting_wins(tmp_path, monkeypatch):
    fake_tools(tmp_path, monkeypatch, "#!/bin/sh\nexit 0\n")
    assert imatrix.find_tool("llama-quantize") == tmp_path / "llama-quantize"
    assert imatrix.missing_tools() is None


def test_unknown_types_are_refused():
    with pytest.raises(LabkitError, match="Accepted: .*'IQ4_XS'"):
        imatrix.build_imatrix_ladder(("Q4_K_XL",))


def test_the_calibration_text_is_not_the_evaluation_text():
    calibration, evaluation = imatrix.calibration_text(), quant.evaluation_text()
    assert len(calibration) > 1000 and calibration[:200] not in evaluation


@pytest.fixture(scope="module")
def calibrated():
    pytest.importorskip("llama_cpp")
    if imatrix.missing_tools():
        pytest.skip(imatrix.missing_tools())
    plain = quant.build_ladder(levels=("Q2_K",))
    return plain, imatrix.build_imatrix_ladder(("Q2_K",))


def test_imatrix_level_is_marked_and_beats_the_plain_one(calibrated):
    """Notebook 04: Q2_K with the imatrix, same type and size, loses less than Q2_K without it."""
    plain, with_imatrix = calibrated
    path = with_imatrix["Q2_K+imatrix"]
    assert path.exists() and not list(path.parent.glob(f".{path.name}.partial-*"))
    rows = quant.measure_ladder({**plain, **with_imatrix}, quant.tokenize_for_eval(), quant.windows_for("cpu"),
                                speed_tokens=0)
    by = {r["level"]: r for r in rows}
    assert by["Q2_K+imatrix"]["imatrix"] and not by["Q2_K"]["imatrix"]
    assert by["Q2_K+imatrix"]["file_mb"] == pytest.approx(by["Q2_K"]["file_mb"], rel=0.02)
    assert by["Q2_K+imatrix"]["kld"] < by["Q2_K"]["kld"]
    assert quant.monotonic_violations(rows, "kld") == []  # imatrix levels are not part of the plain ladder's order
    assert [r["level"] for r in rows][0] == "F16"


def test_a_failing_tool_shows_its_log(tmp_path, monkeypatch):
    fake_tools(tmp_path, monkeypatch, "#!/bin/sh\necho 'error: cannot open model' >&2\nexit 3\n")
    source = tmp_path / "model-F16.gguf"
    from labkit.models import bundled_gguf_path

    os.symlink(bundled_gguf_path(), source)
    with pytest.raises(LabkitError, match="exit code 3") as err:
        imatrix.build_imatrix(source, text="some calibration text")
    assert "cannot open model" in str(err.value)
    assert not list(tmp_path.glob(".*partial*"))
