"""Shared by the browser tests (layer 5): start JupyterLab on a one-cell notebook, open it in Debian's
Chromium through Playwright, run the cell until its widget shows, and hand the page to the test.

    from browser_lab import browser_marks, press_slider, wait_for_state, widget_page
    pytestmark = browser_marks()

    def test_my_widget(tmp_path):
        with widget_page(tmp_path, "from labkit import x\\nx.widget()", ready=".widget-html pre") as page:
            before = page.locator(".widget-html pre").first.inner_text()
            press_slider(page, times=3)
            after = wait_for_state(page, ".widget-html pre", lambda text: "N = 512" in text)

Every wait here is for a state, never for a time: on a loaded machine (CI's 2 cores running two notebooks beside
the browser) each slider step is a round trip to a busy kernel, and the output may change several times before
it shows the last step. So a test waits until the output shows the state it then asserts (the last step's, not
merely a changed one), with limits generous enough for the slowest machine: they cost nothing when it is fast.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nbformat
import pytest

from labkit.runtimes import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STARTUP_TIMEOUT_S = 300  # JupyterLab up, the kernel started and the cell's imports done, on a loaded machine
STATE_TIMEOUT_S = 600  # a widget's output reaching the state a test asserts (200 slider steps on a busy kernel)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser_marks() -> list:
    return [pytest.mark.browser,
            pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt install chromium)")]


@contextlib.contextmanager
def jupyter_lab(tmp_path: Path, code: str) -> Iterator[str]:
    """JupyterLab serving a notebook whose single cell is `code`; yields the notebook's URL."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "widget.ipynb")
    port, token = free_port(), "labkit-browser-test"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    # The server's log goes to a file: a pipe nobody reads fills up (64 KiB of log lines) and blocks the server.
    log = (tmp_path / "jupyterlab.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--notebook-dir={tmp_path}", "--ServerApp.allow_root=True",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=subprocess.DEVNULL, stderr=log, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"jupyter lab exited: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/lab/tree/widget.ipynb?token={token}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _accept_dialogs(page) -> None:
    """Accept any modal JupyterLab shows on a slow start (e.g. the kernel picker): it blocks clicks."""
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    if accept.count():
        accept.first.click()


@contextlib.contextmanager
def widget_page(tmp_path: Path, code: str, ready: str, timeout_s: float = STARTUP_TIMEOUT_S):
    """A Playwright page with `code` run in JupyterLab, once `ready` (a CSS selector) is visible.

    The page's screenshot is saved on exit to $LABKIT_SCREENSHOT_DIR (or tmp_path) as widget.png.
    """
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with jupyter_lab(tmp_path, code) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(120_000)  # clicks and reads on a page a loaded machine renders slowly
            page.goto(url, timeout=STARTUP_TIMEOUT_S * 1000)
            page.wait_for_selector(".jp-Notebook", timeout=STARTUP_TIMEOUT_S * 1000)
            _accept_dialogs(page)
            page.locator(".jp-Cell").first.click()
            # Run the cell once the kernel is ready: retry Shift+Enter until the widget appears.
            target = page.locator(ready)
            prompt = page.locator(".jp-Cell").first.locator(".jp-InputPrompt")
            deadline = time.monotonic() + timeout_s
            while True:
                # Press only while the cell is not running or queued ("[*]"): a slow cell must not be queued again.
                running = prompt.count() > 0 and "*" in prompt.first.inner_text()
                if target.count() == 0 and not running:
                    page.keyboard.press("Shift+Enter")
                try:
                    target.first.wait_for(timeout=3000)
                    break
                except sync_api.TimeoutError:
                    if time.monotonic() > deadline:
                        raise
                    _accept_dialogs(page)
                    page.locator(".jp-Cell").first.click()
            yield page
            shot_dir = Path(os.environ.get("LABKIT_SCREENSHOT_DIR", tmp_path))
            page.screenshot(path=str(shot_dir / f"{Path(str(tmp_path)).name}-widget.png"))
        finally:
            browser.close()


def press_slider(page, nth: int = 0, key: str = "ArrowRight", times: int = 10) -> None:
    """Move the nth ipywidgets slider on the page with the keyboard. Returns at once: the kernel answers each step
    later, so follow it with wait_for_state for what the last step must show."""
    handle = page.locator(".widget-slider .noUi-handle, .widget-slider .ui-slider-handle").nth(nth)
    handle.click()
    for _ in range(times):
        page.keyboard.press(key)


def wait_for_state(page, selector: str, holds: Callable[[str], bool], timeout_s: float = STATE_TIMEOUT_S) -> str:
    """The text of the first element matching `selector`, once `holds(text)` is true (a parse error counts as
    not yet). Polls the page; fails with the last text seen if the state never comes within `timeout_s`."""
    locator = page.locator(selector).first
    deadline = time.monotonic() + timeout_s
    text = None
    while True:
        if page.locator(selector).count():
            try:
                text = locator.inner_text()
                if holds(text):
                    return text
            except (ValueError, AttributeError, IndexError, StopIteration):
                pass  # the output is being replaced, or not yet in the asserted shape
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} did not reach the expected state within {timeout_s:.0f} s; "
                                 f"last text:\n{text}")
        page.wait_for_timeout(200)
