"""labkit.quant_widget: the ladder explorer follows its controls (rows shaped like quant.measure_ladder's)."""

import pytest

from labkit import quant_widget

ROWS = [
    {"level": "F16", "runtime": "llama.cpp", "kld": 0.0, "ppl": 20.0, "top1_agreement": 1.0, "file_mb": 540.0},
    {"level": "Q8_0", "runtime": "llama.cpp", "kld": 0.001, "ppl": 20.1, "top1_agreement": 0.98, "file_mb": 290.0},
    {"level": "Q2_K", "runtime": "llama.cpp", "kld": 0.4, "ppl": 31.0, "top1_agreement": 0.6, "file_mb": 170.0},
]


def test_ladder_explorer_follows_level_and_context():
    pytest.importorskip("ipywidgets")
    box = quant_widget.ladder_explorer(ROWS)
    level, model, gpu, context, out = box.children
    before = out.value
    assert "ladder-result" in before and level.value == "Q2_K"  # the last row when fewer than five
    level.value = "F16"
    assert out.value != before and "KLD <b>0.0000</b>" in out.value
    fits = out.value
    context.value = 131072
    assert out.value != fits
