"""The "Dataset and model" tab in headless Chromium (the CDP client of ``test_browser.py``): start, more privacy,
accept; the previews, the plot, the figures and the downloads appear. Screenshot: tests/artifacts/space_loop_tab.png.
Skipped where no Chromium is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from loop_components import make_loop

_spec = importlib.util.spec_from_file_location("dpd_browser_client", Path(__file__).with_name("test_browser.py"))
_browser = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_browser)

pytestmark = [pytest.mark.skipif(_browser.CHROMIUM is None, reason="no Chromium found (apt-get install -y chromium)"),
              pytest.mark.filterwarnings("ignore:::gradio.queueing"), pytest.mark.usefixtures("one_torch_thread")]


def _text(browser, elem_id: str) -> str:
    return browser.evaluate(f"(document.querySelector('#{elem_id}') || {{}}).innerText || ''")


def test_the_loop_tab_in_a_browser(tmp_path):
    from dpdiffusion.space.loop_tab import build_loop_demo

    demo = build_loop_demo(tmp_path / "work", make_loop=lambda: make_loop(tmp_path, num_previews=4))
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    browser = _browser.Browser(_browser.CHROMIUM)
    try:
        browser.goto(demo.local_url)
        browser.wait_for("!!document.querySelector('#dp-loop-start')", timeout=120)
        browser.click("#dp-loop-start")
        browser.wait_for("/epsilon = 1\\b/.test((document.querySelector('#dp-loop-figures') || {}).innerText || '')",
                         timeout=180)
        browser.wait_for("document.querySelectorAll('#dp-loop-previews img').length >= 4", timeout=30)
        browser.wait_for("!!document.querySelector('#dp-loop-plot img, #dp-loop-plot svg, #dp-loop-plot canvas')",
                         timeout=30)
        browser.click("#dp-loop-more-privacy")
        browser.wait_for("/epsilon = 0.5\\b/.test((document.querySelector('#dp-loop-figures') || {}).innerText || '')",
                         timeout=120)
        assert "leakage from the release: dark_skin" in _text(browser, "dp-loop-figures")
        browser.click("#dp-loop-accept")
        browser.wait_for("/Accepted epsilon = 0.5/.test((document.querySelector('#dp-loop-final') || {}).innerText "
                         "|| '')", timeout=180)
        files = "(document.querySelector('#dp-loop-files') || {}).innerHTML || ''"
        browser.wait_for(f"/release\\.zip/.test({files})", timeout=30)
        assert "model.zip" in browser.evaluate(files)
        shot = browser.screenshot(_browser.ARTIFACTS / "space_loop_tab.png")
        print(f"\nscreenshot of the Dataset and model tab after accept: {shot}")
    finally:
        browser.close()
        demo.close()
