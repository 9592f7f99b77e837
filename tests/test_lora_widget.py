"""labkit.lora_widget: the planner's table (a plain function) and the widget following its rank slider."""

import pytest

from labkit import LabkitError, lora, lora_widget


def test_planner_html_follows_rank_and_refuses_unknown_modules():
    text = lora_widget.plan_html("llama-3.1-8b", 32, "all linear (attention + MLP)", 2048)
    lora32 = lora.lora_plan("llama-3.1-8b", rank=32, target_modules="all-linear")[1]["trainable"]
    assert f"{lora32:,}" in text and "r=32" in text
    qv = lora.lora_plan("llama-3.1-8b", rank=32, target_modules=("q_proj", "v_proj"))[1]["trainable"]
    assert f"{qv:,}" in lora_widget.plan_html("llama-3.1-8b", 32, "q, v (attention, the LoRA paper)", 2048)
    with pytest.raises(LabkitError, match="unknown module choice 'mlp'"):
        lora_widget.plan_html("llama-3.1-8b", 8, "mlp", 2048)


def test_planner_updates_when_the_rank_moves():
    pytest.importorskip("ipywidgets")
    box = lora_widget.planner(rank=8)
    before = box.output.value
    box.controls["rank"].value = 64
    assert box.output.value != before and "r=64" in box.output.value


def test_planner_starts_with_checkpointing_on_and_quotes_the_gpu_check_for_the_setting_shown():
    on = lora_widget.plan_html("llama-3.1-8b", 16, "all linear (attention + MLP)", 2048)
    off = lora_widget.plan_html("llama-3.1-8b", 16, "all linear (attention + MLP)", 2048, gradient_checkpointing=False)
    assert "gradient checkpointing:" in on and lora.estimate_accuracy_note(True) in on
    assert lora.estimate_accuracy_note(False) in off and on != off
    pytest.importorskip("ipywidgets")
    assert lora_widget.planner().controls["gradient_checkpointing"].value is True
