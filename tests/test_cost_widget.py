"""labkit.cost_widget: the break-even explorer follows its controls."""

import pytest

from labkit import cost_widget
from labkit.errors import LabkitError


def test_break_even_explorer_reacts_to_its_controls():
    pytest.importorskip("ipywidgets")
    box = cost_widget.break_even_explorer(monthly_tokens=1e8, gpu="H100", api="GPT-6.2 Sol", utilization=0.5,
                                          batch=8)
    before = box.summary.value
    assert "labkit-break-even" in before and "GPT-6.2 Sol" in before
    box.controls["monthly_tokens"].value = 1e10
    assert box.summary.value != before
    box.controls["utilization"].value = 0.05
    assert "Self-hosted" in box.summary.value


def test_an_unknown_api_or_gpu_is_refused_not_silently_replaced():
    pytest.importorskip("ipywidgets")
    with pytest.raises(LabkitError, match="Accepted.*GPT-6.2 Sol"):
        cost_widget.break_even_explorer(api="GPT-4o")
    with pytest.raises(LabkitError, match="Accepted"):
        cost_widget.break_even_explorer(gpu="TPU v5")
