"""Layer 5: a real browser opens JupyterLab, runs a notebook that uses a labkit widget, moves the
slider and sees the output change. Needs Chromium (Debian's `chromium`) and the `playwright` package;
skipped, with the reason, where either is missing. Other notebooks' widgets: tests/test_browser_*.py,
all built on tests/browser_lab.py."""

from browser_lab import browser_marks, press_slider, widget_page

pytestmark = browser_marks()


def test_widget_in_jupyterlab_reacts_to_the_slider(tmp_path):
    code = "from labkit import basecamp_widget\nbasecamp_widget.fit_explorer(default_gib=8)"
    with widget_page(tmp_path, code, ready=".widget-html pre") as page:
        table = page.locator(".widget-html pre")
        before = table.first.inner_text()
        assert "Llama 3.1 8B" in before and "✅" in before
        press_slider(page, times=40)
        page.wait_for_function(
            "before => document.querySelector('.widget-html pre').innerText !== before", arg=before, timeout=10_000)
        after = table.first.inner_text()
    assert after.count("✅") > before.count("✅"), "more memory must make more models fit"
