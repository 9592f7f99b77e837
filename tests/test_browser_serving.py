"""Layer 5 for notebook 09: the capacity planner in a real JupyterLab. Raising the ITL target must raise the number
of users the ITL limit allows, to exactly what serving_widget.planner_html computes for the new target."""

import re

from browser_lab import browser_marks, press_slider, widget_page

from labkit import serving_widget

pytestmark = browser_marks()

CODE = ("from labkit import serving_widget\n"
        "serving_widget.capacity_planner(model='llama-3.1-8b', device='NVIDIA T4', weights='Q4_K_M',"
        " prompt_tokens=1024, new_tokens=256, ttft_ms=1000, itl_ms=100, efficiency=0.5)")
ITL_SLIDER = 3  # sliders in order: prompt tokens, answer tokens, TTFT target, ITL target, efficiency


def _itl_users(text: str) -> int:
    return int(re.search(r"ITL\s+:\s+([\d,]+) users", text).group(1).replace(",", ""))


def test_planner_reacts_to_the_itl_target(tmp_path):
    with widget_page(tmp_path, CODE, ready=".widget-html pre", timeout_s=400) as page:
        before = page.locator(".widget-html pre").first.inner_text()
        press_slider(page, nth=ITL_SLIDER, times=6)  # log slider, 0.05 decades a step: 100 ms -> 10**2.3 ms
        # each key press is one round trip to the kernel: wait for the last one (the target the text names)
        page.wait_for_function(
            "() => { const t = document.querySelector('.widget-html pre'); return t && /ITL ≤ 200 ms/.test(t.innerText); }",
            timeout=60_000)
        after = page.locator(".widget-html pre").first.inner_text()
    expected = serving_widget.planner_html("llama-3.1-8b", "NVIDIA T4", "Q4_K_M", 1024, 256, 1000, 10 ** 2.3, 0.5)
    assert "ITL ≤ 100 ms" in before and "ITL ≤ 200 ms" in after
    assert _itl_users(after) > _itl_users(before)
    assert _itl_users(after) == _itl_users(expected)
