"""Driving the web app in a real browser: the system's Chromium through playwright (never a
browser of its own download). Used by the browser test and by ``python -m app.screenshot``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def chromium_path() -> str | None:
    """The system's Chromium: ``$DPSEG_CHROMIUM``, else ``chromium`` or ``chromium-browser`` on
    the PATH (Debian: apt-get install chromium)."""
    found = os.environ.get("DPSEG_CHROMIUM")
    return found or shutil.which("chromium") or shutil.which("chromium-browser")


def segment_in_browser(
    url: str,
    images: list[str | Path],
    vocab: str,
    method: str | None = None,
    explain: str | None = None,
    screenshot: str | Path | None = None,
    timeout_s: float = 180,
) -> dict:
    """Open the app at ``url``, upload ``images``, type ``vocab`` (and ``explain``), pick
    ``method``, press segment and wait for the answer. Returns {"status", "names" (the legend's
    classes, largest first), "sizes" (each overlay's (width, height) in pixels)}; with
    ``screenshot``, the whole page is saved there."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError("no Chromium here: apt-get install chromium (or $DPSEG_CHROMIUM)")
    timeout = timeout_s * 1000
    with sync_playwright() as p:
        # --no-sandbox: Chromium's sandbox refuses to start as root (CI runs as root)
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, timeout=timeout)
            page.locator("#images input[type=file]").set_input_files([str(i) for i in images])
            page.locator("#vocab textarea").fill(vocab)
            if explain:
                page.locator("#explain textarea").fill(explain)
            if method:
                page.get_by_label(method, exact=True).check()
            status = page.locator("#status textarea")
            before = status.input_value()
            page.locator("#run").click()
            page.wait_for_function(
                "([sel, old]) => { const e = document.querySelector(sel); "
                "return e && e.value && e.value !== old; }",
                arg=["#status textarea", before],
                timeout=timeout,
            )
            result = {"status": status.input_value(), "names": [], "sizes": []}
            if not result["status"].startswith("error:"):
                overlays = page.locator("#overlays img")
                overlays.first.wait_for(timeout=timeout)
                page.wait_for_function(
                    "n => [...document.querySelectorAll('#overlays img')]"
                    ".filter(i => i.complete && i.naturalWidth > 0).length >= n",
                    arg=len(images),
                    timeout=timeout,
                )
                result["names"] = page.locator("#legend .legend-name").all_inner_texts()
                result["sizes"] = [
                    tuple(img.evaluate("e => [e.naturalWidth, e.naturalHeight]"))
                    for img in overlays.all()
                ]
                if explain:
                    page.locator("#explained img").wait_for(timeout=timeout)
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            return result
        finally:
            browser.close()
