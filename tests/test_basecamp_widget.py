"""labkit.basecamp_widget: the fit explorer redraws its grid when the memory slider moves."""

import pytest

from labkit import basecamp_widget


def test_fit_explorer_updates_when_the_slider_moves():
    pytest.importorskip("ipywidgets")
    w = basecamp_widget.fit_explorer(default_gib=8)
    slider, output = w.children[0].children[0], w.children[1]
    before = output.value
    slider.value = 100
    after = output.value
    assert before != after and after.count("✅") > before.count("✅")
