"""labkit.lora_gpu_check: the committed LoRA/QLoRA GPU check, estimated with today's labkit.vram."""

import pytest

from labkit import lora, lora_gpu_check, vram


def test_the_committed_gpu_check_is_made_with_todays_estimator():
    """The committed measurements stay; the estimate beside them is this labkit's, so an improved estimator shows."""
    results = {"device_name": "GPU X", "model": "llama-3.1-8b", "seq_len": 2048, "rows": [
        {"method": "lora", "gradient_checkpointing": False, "seq_len": 2048, "rank": 16, "measured_gib": 37.2,
         "estimate_gib": 31.7, "error": -0.147}]}
    now = vram.estimate_training("llama-3.1-8b", "lora", dtype="bf16", lora_rank=16, target_modules="all-linear",
                                 seq_len=2048, gradient_checkpointing=False, device="cuda").total / 2**30
    assert lora.current_estimate_gib(results, results["rows"][0]) == pytest.approx(now)
    assert lora.committed_estimate_check(results)[False][0][1] == pytest.approx(now / 37.2 - 1)
    assert now != pytest.approx(31.7, rel=0.01)  # today's estimate is not the one the run printed


def test_the_committed_gpu_check_is_quoted_for_each_checkpointing_setting():
    results = {"device_name": "GPU X", "model": "m", "seq_len": 64, "rows": [
        {"method": "lora", "gradient_checkpointing": False, "error": -0.147, "estimate_gib": 0.853, "measured_gib": 1},
        {"method": "lora", "gradient_checkpointing": True, "error": 0.005, "estimate_gib": 1.005, "measured_gib": 1},
        {"method": "qlora", "skipped": "no bnb"}]}
    check = lora.committed_estimate_check(results)  # "m" is no shipped config: the rows' own estimates
    assert check[False][0][1] == pytest.approx(-0.147) and check[True][0][1] == pytest.approx(0.005)
    assert "-14.7%" in lora.estimate_accuracy_note(False, results) and "GPU X" in lora.estimate_accuracy_note(False, results)
    assert "+0.5%" in lora.estimate_accuracy_note(True, results)
    assert "no committed" in lora.estimate_accuracy_note(True, {"rows": []})


def test_lora_reexports_the_check():
    assert lora.estimate_accuracy_note is lora_gpu_check.estimate_accuracy_note
