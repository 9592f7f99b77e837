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


def test_measure_training_refuses_what_it_cannot_run_with_a_clear_error(tiny_config):
    with pytest.raises(LabkitError, match="QLoRA .* CUDA GPU"):
        vram_measure.measure_training(tiny_config, "qlora", device="cpu")
    with pytest.raises(LabkitError, match="unknown training method"):
        vram_measure.measure_training(tiny_config, "dpo", device="cpu")
    with pytest.raises(LabkitError, match="LoRA target module.*q_proj"):
        vram_measure.measure_training(tiny_config, "lora", target_modules=["qkv"], device="cpu")


def test_measure_training_counts_weights_adapters_and_what_the_steps_keep(tiny_config):
    """LoRA on a tiny Llama, two steps on the CPU: the weights are the bf16 base plus fp32 adapters (peft's count),
    and the steps keep more than the adapters' gradients and AdamW moments (saved activations come on top)."""
    lora = vram_measure.measure_training(tiny_config, "lora", "bf16", seq_len=64, lora_rank=4, device="cpu")
    trainable = vram.lora_targets(tiny_config, 4).trainable
    assert lora.kind == "measured" and lora.overhead == 0
    assert lora.weights == pytest.approx(vram.parameter_count(tiny_config) * 2 + trainable * 4, rel=1e-3)
    assert lora.activations > trainable * 4 * 3  # gradients + two moments, all fp32
