"""Layer 5 for notebook 04: the quant-ladder widget in a real browser. The cell measures a small ladder
(F16 / Q8_0 / Q2_K of the bundled model, cached after the first build) and shows the widget; the test
picks a level in the dropdown and moves the context slider, and the verdict and quality follow."""

from browser_lab import browser_marks, press_slider, wait_for_state, widget_page

pytestmark = browser_marks()

CODE = """from labkit import quant, quant_widget
paths = quant.build_ladder(levels=("Q8_0", "Q2_K"))
rows = quant.measure_ladder(paths, quant.tokenize_for_eval(), quant.Windows(64, 32, 2), speed_tokens=0)
quant_widget.ladder_explorer(rows)"""


def test_ladder_widget_follows_level_and_context(tmp_path):
    with widget_page(tmp_path, CODE, ready=".ladder-result") as page:
        before = page.locator(".ladder-result").first.inner_text()
        assert "llama-3.1-8b at Q2_K" in before and "fits ✅" in before  # 8B at 2-3 bits fits a 4090

        page.locator(".widget-dropdown select").first.select_option("F16")
        f16 = wait_for_state(page, ".ladder-result", lambda text: "at F16" in text)
        assert "at F16" in f16 and "KLD 0.0000" in f16 and "same top token 100.0%" in f16

        press_slider(page, times=200)  # context towards 131k tokens: the KV cache outgrows the card
        wait_for_state(page, ".ladder-result", lambda text: "does NOT fit" in text)
