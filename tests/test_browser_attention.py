"""Layer 5 for notebook 06: the attention memory explorer in a real JupyterLab; moving the N slider
right makes the N x N matrix, and so naive attention's estimate, grow."""

import re

from browser_lab import browser_marks, press_slider, wait_for_state, widget_page

pytestmark = browser_marks()


def _naive_estimate_mib(text: str) -> float:
    return float(re.search(r"naive \(N x N\)\s+([\d.,]+)", text).group(1).replace(",", ""))


def test_attention_explorer_reacts_to_the_slider(tmp_path):
    code = "from labkit import attention_widget\nattention_widget.explorer(seq_len=128, heads=4, measure_up_to=1024)"
    with widget_page(tmp_path, code, ready=".widget-html pre") as page:
        before = page.locator(".widget-html pre").first.inner_text()
        assert "N = 128 tokens" in before and "measured" in before
        press_slider(page, times=2)  # log2 N: 7 -> 9
        after = wait_for_state(page, ".widget-html pre", lambda text: "N = 512 tokens" in text)
    assert "N = 512 tokens" in after
    assert _naive_estimate_mib(after) > 10 * _naive_estimate_mib(before)  # N x 4 -> N x N x 16
