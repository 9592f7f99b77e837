"""labkit.catalog_widget: the picker's table, and the widget following its slider."""

import pytest

from labkit import catalog, catalog_widget


def test_recommendations_table_names_each_pick_or_says_none_fits():
    assert "No catalog model fits" in catalog_widget.recommendations_html([], "vision", 1)
    page = catalog_widget.recommendations_html(catalog.recommend("code", 12), "code", 12)
    assert page.startswith("<table>") and "Qwen2.5-Coder" in page


def test_picker_updates_when_the_slider_moves():
    pytest.importorskip("ipywidgets")
    widget = catalog_widget.picker(task="code", vram_gb=4)
    slider = widget.children[0].children[1]
    output = widget.children[-1]
    before = output.value
    slider.value = 48
    assert output.value != before and "Qwen2.5-Coder 32B" in output.value
