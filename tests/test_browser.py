"""Layer 5: a real browser opens JupyterLab, runs a notebook that uses a labkit widget, moves the
slider and sees the output change. Needs Chromium (Debian's `chromium`) and the `playwright` package;
skipped, with the reason, where either is missing."""

import os
import shutil
import socket
import subprocess
import sys
import time

import nbformat
import pytest

from labkit.runtimes import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt install chromium)"),
]


@pytest.fixture()
def jupyter_lab(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from labkit import basecamp\nbasecamp.fit_widget(default_gib=8)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "widget.ipynb")
    port, token = free_port(), "labkit-browser-test"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--notebook-dir={tmp_path}", "--ServerApp.allow_root=True",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/lab/tree/widget.ipynb?token={token}"
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def _accept_dialogs(page) -> None:
    """Accept any modal JupyterLab shows on a slow start (e.g. the kernel picker): it blocks clicks."""
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    if accept.count():
        accept.first.click()


def test_widget_in_jupyterlab_reacts_to_the_slider(jupyter_lab, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(jupyter_lab)
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        _accept_dialogs(page)
        page.locator(".jp-Cell").first.click()
        # Run the cell once the kernel is ready: retry Shift+Enter until the widget appears.
        table = page.locator(".widget-html pre")
        for _ in range(30):
            if table.count() == 0:
                page.keyboard.press("Shift+Enter")
            try:
                table.first.wait_for(timeout=3000)
                break
            except sync_api.TimeoutError:
                _accept_dialogs(page)
                page.locator(".jp-Cell").first.click()
        before = table.first.inner_text()
        assert "Llama 3.1 8B" in before and "✅" in before
        handle = page.locator(".widget-slider .noUi-handle, .widget-slider .ui-slider-handle").first
        handle.click()
        for _ in range(40):
            page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "before => document.querySelector('.widget-html pre').innerText !== before", arg=before, timeout=10_000)
        after = table.first.inner_text()
        page.screenshot(path=os.environ.get("LABKIT_SCREENSHOT", str(tmp_path / "widget.png")))
        browser.close()
    assert after.count("✅") > before.count("✅"), "more memory must make more models fit"
