"""Layer 5 for notebook 07: the LoRA planner in a real browser. Moving the rank slider must change the trainable
parameter count (and only LoRA's and QLoRA's), as lora.lora_plan computes it."""

import re

from browser_lab import browser_marks, press_slider, wait_for_state, widget_page

from labkit import lora

pytestmark = browser_marks()


def _trainable(text: str, method: str) -> int:
    line = next(row for row in text.splitlines() if row.startswith(method + " "))
    return int(re.split(r"\s+", line)[1].replace(",", ""))


def test_planner_reacts_to_the_rank_slider(tmp_path):
    code = "from labkit import lora_widget\nlora_widget.planner(rank=16)"
    with widget_page(tmp_path, code, ready=".widget-html pre") as page:
        before = page.locator(".widget-html pre").first.inner_text()
        assert "r=16" in before
        press_slider(page, nth=0, times=1)  # rank 16 -> 32
        after = wait_for_state(page, ".widget-html pre", lambda text: "r=32" in text)
    expected = {r["method"]: r["trainable"] for r in lora.lora_plan("llama-3.1-8b", rank=32, target_modules="all-linear")}
    assert _trainable(before, "lora") * 2 == _trainable(after, "lora") == expected["lora"]
    assert _trainable(after, "full") == _trainable(before, "full") == expected["full"]
    assert "r=32" in after
