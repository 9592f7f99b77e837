"""labkit.attention_widget: the report the widget draws (estimate beside measurement), and the widget."""

import pytest

from labkit import LabkitError
from labkit import attention as A
from labkit.attention_widget import explorer, format_report, memory_report


def test_report_measures_up_to_the_limit_and_agrees_with_the_estimate():
    r = memory_report(256, heads=4, head_dim=32, dtype="fp32", measure_up_to=256)
    assert r["scores_bytes"] == A.scores_bytes(256, 4, "fp32")
    assert abs(r["naive_measured"] - r["naive_estimate"]) / r["naive_measured"] < 0.05
    assert r["fused_measured"] < r["naive_measured"] / 10
    text = format_report(r)
    assert "estimate" in text and "measured" in text and "x the fused kernel" in text


def test_report_above_the_limit_is_estimate_only():
    r = memory_report(65536, heads=32, head_dim=128, dtype="bf16", measure_up_to=1024)
    assert r["naive_measured"] is None and r["scores_bytes"] == 32 * 65536**2 * 2
    assert "estimate only" in format_report(r)


def test_bad_sizes_are_refused():
    with pytest.raises(LabkitError, match="positive"):
        memory_report(0)


def test_widget_updates_when_n_grows():
    pytest.importorskip("ipywidgets")
    w = explorer(seq_len=64, heads=2, head_dim=32, measure_up_to=128)
    slider, out = w.children[0].children[0], w.children[2]
    before = out.value
    slider.value += 2
    assert out.value != before and "N = 256 tokens" in out.value
