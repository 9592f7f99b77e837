"""Layer 5 for notebook 03's calculator: in a real browser, moving the context slider past the model's
window brings up the warning banner (issue 16: a learner reading the widget must see it), and the
training mode has its gradient-checkpointing box. Skipped where Chromium or playwright is missing."""

from browser_lab import browser_marks, press_slider, wait_for_state, widget_page

pytestmark = browser_marks()


def test_calculator_flags_a_context_beyond_the_window_when_the_slider_moves(tmp_path):
    code = "from labkit import vram_widget\nvram_widget.calculator('phi-3-mini', 'bf16', context=2048)"
    with widget_page(tmp_path, code, ready=".widget-html table") as page:
        assert page.locator(".labkit-beyond-window").count() == 0  # 2,048 tokens: within Phi-3's 4,096
        assert page.get_by_text("gradient checkpointing").count() >= 1
        press_slider(page, nth=0, times=2)  # context 2,048 -> 8,192
        text = wait_for_state(page, ".labkit-beyond-window", lambda text: "beyond" in text)
    assert "beyond the model's maximum context of 4,096" in text
