"""Labels and the adapted profile stored in the browser across app restarts, in headless Chromium.

Each restart serves on the same port, because browser storage belongs to one
origin, and keeps the browser context, so the stored values stay.
"""

from __future__ import annotations

import pytest
from app_server import free_port, launched_app
from test_browser_personalize import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt install chromium)")


def test_browser_storage_across_restarts(tmp_path):
    from playwright.sync_api import sync_playwright

    port = free_port()
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}  # the same secret file for every start
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context().new_page()
        page.set_default_timeout(TIMEOUT_MS)

        with launched_app(env=cache, port=port) as url:
            page.goto(url)
            page.click("#mrm-label-a")
            page.wait_for_selector("#mrm-label-status:has-text('Labelled pair 1')")
            page.click("#mrm-adapt")
            page.wait_for_selector("#mrm-adapt-status:has-text('Adapted on 1 labelled pair')")

        # Same secret file: both the labels and the profile come back.
        with launched_app(env=cache, port=port) as url:
            page.goto(url)
            page.wait_for_selector("#mrm-label-status:has-text('Restored 1 labelled pair')")
            page.wait_for_selector("#mrm-adapt-status:has-text('Restored the adapted profile')")

            # Values encrypted with another key (a third start with another secret) look like this.
            page.evaluate("""() => {
                localStorage.setItem("mrm-labels", "sealed-with-another-key");
                localStorage.setItem("mrm-profile", "sealed-with-another-key");
            }""")
            page.reload()
            status = page.wait_for_selector("#mrm-label-status:has-text('could not be read')")
            assert "labels" in status.inner_text()
            assert "could not be read" in page.inner_text("#mrm-adapt-status")
        browser.close()
