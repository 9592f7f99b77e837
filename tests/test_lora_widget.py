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
