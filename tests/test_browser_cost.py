"""Layer 5 for notebook 08: the break-even widget in a real JupyterLab. Moving the monthly-volume slider must
change both monthly bills, and the API bill must grow with the volume."""

import re

from browser_lab import browser_marks, press_slider, wait_for_state, widget_page

pytestmark = browser_marks()

CODE = ("from labkit import cost_widget\n"
        "cost_widget.break_even_explorer(monthly_tokens=1e7, gpu='H100', api='GPT-6.2 Sol', utilization=0.5, batch=8)")


def _amount(text: str) -> float:
    return float(re.sub(r"[^\d.]", "", text))


def _bill(page, css: str) -> float:
    return _amount(page.locator(f".labkit-break-even {css}").first.inner_text())


def test_break_even_widget_in_jupyterlab_reacts_to_the_volume_slider(tmp_path):
    with widget_page(tmp_path, CODE, ready=".labkit-break-even") as page:
        before = page.locator(".labkit-break-even").first.inner_text()
        api_before, self_before = _bill(page, ".api-bill"), _bill(page, ".self-bill")
        assert "GPT-6.2 Sol" in before and "Break-even" in before and api_before > 0 and self_before > 0
        press_slider(page, nth=0, times=15)  # the first slider is tokens/month: 1.5 decades up
        # every key press is one round trip to the kernel: wait for the last one, not the first
        wait_for_state(page, ".labkit-break-even .api-bill", lambda text: _amount(text) > 10 * api_before)
        api_after = _bill(page, ".api-bill")
    assert api_after > 10 * api_before, "thirty times the volume must multiply the API bill"
