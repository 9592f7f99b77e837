"""Layer 5 for notebook 05: the PagedAttention simulator widget in a real browser. Moving the block-size
slider to its largest value must change the table, and make paging waste more (bigger last blocks)."""

import re

from browser_lab import browser_marks, press_slider, wait_for_state, widget_page

pytestmark = browser_marks()


def paged_waste(table_text: str) -> float:
    row = next(line for line in table_text.splitlines() if line.startswith("paged "))
    return float(re.split(r"\s+", row.strip())[1])


def test_paged_simulator_widget_reacts_to_the_block_size(tmp_path):
    code = "from labkit import paged_widget\npaged_widget.simulator(n_requests=60, capacity=32768)"
    with widget_page(tmp_path, code, ready="pre.kv-serving") as page:
        before = page.locator("pre.kv-serving").first.inner_text()
        assert "contiguous-max" in before and "paged+prefix-sharing" in before
        press_slider(page, nth=0, times=4)  # block size: 16 -> 32 -> 64 -> 128 -> 256
        after = wait_for_state(page, "pre.kv-serving", lambda text: paged_waste(text) > paged_waste(before))
    assert paged_waste(after) > paged_waste(before), (before, after)
