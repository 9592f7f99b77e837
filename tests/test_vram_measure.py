"""labkit.vram_measure: the tensor tracker, and measuring a model's memory beside the estimate."""

import pytest
import torch

from labkit import vram, vram_measure
from labkit.errors import LabkitError


def test_tracker_counts_views_once_and_forgets_freed_tensors():
    with vram_measure.TensorMemoryTracker() as t:
        a = torch.ones(1000)  # 4000 bytes
        b = a.view(10, 100)  # a view: no new storage
        c = a * 2
        del c
        d = torch.ones(10)
    assert t.peak == 8000
    assert t.current == 4040
    del a, b, d


def test_measure_refuses_up_front_when_the_estimate_does_not_fit():
    with pytest.raises(LabkitError, match="does not fit the free memory"):
        vram_measure.measure_inference("llama-3.1-70b", "fp32", context=4096, device="cpu")
    with pytest.raises(LabkitError, match="GGUF"):
        vram_measure.measure_inference("llama-3.2-1b", "Q4_K_M", device="cpu")


@pytest.mark.slow
def test_measure_inference_on_cpu_agrees_with_the_estimate():
    measured = vram_measure.measure_inference("smollm2-135m", "fp32", context=512, new_tokens=4, device="cpu")
    est = vram.estimate_inference("smollm2-135m", "fp32", context=512, new_tokens=4, device="cpu")
    assert measured.kind == "measured"
    tensors = measured.weights + measured.kv_cache + measured.activations
    assert tensors == pytest.approx(est.weights + est.kv_cache + est.activations, rel=0.05)
    assert measured.total == pytest.approx(est.total, rel=0.3)  # the RSS overhead varies by machine
    assert "measured" in est.table(measured)
