"""labkit.paged_widget: the simulator's widget redraws its table when a control moves."""

import pytest


def test_simulator_widget_updates_when_the_block_size_moves():
    pytest.importorskip("ipywidgets")
    import matplotlib

    matplotlib.use("Agg")
    from labkit import paged_widget

    box = paged_widget.simulator(n_requests=40, capacity=16384)
    table = box.children[2]
    before = table.value
    assert "paged" in before and "contiguous-max" in before
    box.children[0].children[0].value = 128  # the block-size slider
    assert table.value != before
