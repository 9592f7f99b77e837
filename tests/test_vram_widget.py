"""labkit.vram_widget: the calculator (a plain function, tested without ipywidgets), its views and the widget."""

import json

import pytest

from labkit import vram, vram_band, vram_widget
from labkit.errors import LabkitError
from labkit.models import load_config


def test_calculator_function_rows_and_html():
    calc = vram_widget.calculate("llama-3.1-8b", "bf16", context=4096)
    names = [r.name for r in calc.rows]
    assert names[:6] == ["T4", "RTX 3060", "RTX 4090", "A100 40GB", "A100 80GB", "H100 80GB"]
    assert names[-1].startswith("yours")
    assert [r.fits for r in calc.rows[:6]] == [False, False, True, True, True, True]
    page = vram_widget.bars_html(calc)
    assert "RTX 4090" in page and "❌" in page and "KV cache" in page
    split = vram_widget.calculate("llama-3.1-70b", "bf16", context=4096, n_gpus=4)
    assert "per GPU" in vram_widget.bars_html(split)
    train = vram_widget.calculate("llama-3.1-8b", "Q4_K_M", method="qlora")
    assert train.notes and train.estimate.optimizer_states > 0
    with pytest.raises(LabkitError, match="unknown method"):
        vram_widget.calculate(method="rlhf")


def test_calculator_widget_updates_when_a_control_moves():
    pytest.importorskip("ipywidgets")

    box = vram_widget.calculator()
    before = box.output.value
    box.controls["context"].value = 131072
    assert box.output.value != before and "131072" not in before
    box.controls["dtype"].value = "Q2_K"
    assert "Q2_K" in box.output.value


def test_plots_draw(tmp_path):
    import matplotlib

    matplotlib.use("Agg")

    fig = vram_widget.plot_breakdown({"a": vram.estimate_inference("llama-3.2-1b"),
                                      "b": vram.estimate_training("llama-3.2-1b", "qlora")})
    fig.savefig(tmp_path / "a.png")
    fig = vram_widget.plot_context_sweep("qwen2.5-0.5b")
    assert len(fig.axes[0].lines) == 4


def test_context_beyond_the_window_is_flagged_in_the_calculator():
    calc = vram_widget.calculate("phi-3-mini", "bf16", context=8192)
    assert calc.beyond_window and str(calc).startswith("⚠")
    assert "labkit-beyond-window" in vram_widget.bars_html(calc)
    fine = vram_widget.calculate("phi-3-mini", "bf16", context=2048)
    assert not fine.beyond_window and "labkit-beyond-window" not in vram_widget.bars_html(fine)
    train = vram_widget.calculate("phi-3-mini", "bf16", context=8192, method="lora")
    assert train.beyond_window


def test_calculator_training_has_gradient_checkpointing():
    """The 70B QLoRA notebook 03 suggests fits one 80 GB GPU with checkpointing, not without."""
    on = vram_widget.calculate("llama-3.1-70b", "bf16", context=4096, method="qlora", gradient_checkpointing=True)
    off = vram_widget.calculate("llama-3.1-70b", "bf16", context=4096, method="qlora", gradient_checkpointing=False)
    h100 = lambda c: next(r for r in c.rows if r.name == "H100 80GB")  # noqa: E731
    assert h100(on).fits and not h100(off).fits
    assert on.estimate.activations < off.estimate.activations / 5
    assert "gradient checkpointing on" in on.notes


def test_calculator_widget_takes_the_learners_own_model_and_checkpointing(tmp_path):
    pytest.importorskip("ipywidgets")

    (tmp_path / "config.json").write_text(json.dumps(load_config("olmoe-1b-7b")))
    box = vram_widget.calculator()
    box.controls["method"].value = "qlora"
    before = box.output.value
    box.controls["gradient_checkpointing"].value = False
    assert box.output.value != before
    box.own_model.value = str(tmp_path)
    assert box.controls["model"].value == str(tmp_path)
    assert "olmo" in box.output.value.lower() or tmp_path.name in box.output.value
    box.own_model.value = "mamba-state-spaces/not-cached"
    assert "color:#a00" in box.output.value  # the refusal, shown in the widget
    mine = vram_widget.calculator(load_config("qwen3-8b"))
    assert mine.controls["model"].options[0][0].startswith("yours")


def test_the_calculator_shows_the_band_of_a_model_without_a_formula(held_out_configs):
    calc = vram_widget.calculate(held_out_configs["starcoder2"], "bf16", context=1024)
    band = f"±{vram_band.GENERIC_BANDS['inference (traced)'][0]:.0%}"
    assert band in str(calc) and band in vram_widget.bars_html(calc)
    assert any(n.startswith(f"band {band}") for n in calc.notes)
    formula = vram_widget.calculate("llama-3.2-1b", "bf16", context=1024)
    assert "±" not in str(formula) and not any(n.startswith("band") for n in formula.notes)
