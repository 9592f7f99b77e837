"""labkit.bench_widget: the roofline explorer follows its controls."""

import pytest

from labkit import bench_widget


def test_roofline_explorer_updates_when_moved():
    pytest.importorskip("ipywidgets")
    box = bench_widget.roofline_explorer({"my laptop": 50.0})
    params, fmt, device, out = box.children
    assert device.value == "my laptop"
    assert "3.1 tokens/s" in out.value  # 8 B x 2 bytes at 50 GB/s
    before = out.value
    fmt.value = "Q4_K_M"
    assert out.value != before and "GB</b>" in out.value
    device.value = "NVIDIA H100 80GB"
    assert "fits in VRAM" in out.value
