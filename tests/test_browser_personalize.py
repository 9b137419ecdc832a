"""The Personalize tab in headless Chromium: label, reload, delete, adapt, score, in offline demo mode.

Screenshots go to `test-artifacts/`. The page must make no request to any host
other than the app's own 127.0.0.1 server.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
from app_server import REPO_ROOT, launched_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = REPO_ROOT / "test-artifacts"
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt install chromium)")


@pytest.fixture(scope="module")
def browser_page():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with launched_app() as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        foreign_requests: list[str] = []
        page.on("request", lambda request: _record_foreign(request.url, foreign_requests))
        page.goto(url)
        page.wait_for_selector("#mrm-label-a")
        yield page, foreign_requests
        browser.close()


def _record_foreign(url: str, found: list[str]) -> None:
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https", "ws", "wss") and parsed.hostname != "127.0.0.1":
        found.append(url)


def labelled_rows(page) -> int:
    """Number of data rows in the labels table (the grid counts its header row too)."""
    return int(page.get_attribute("#mrm-labels-table [role=grid]", "aria-rowcount")) - 1


def wait_for_rows(page, count: int) -> None:
    page.wait_for_function(
        "n => Number(document.querySelector('#mrm-labels-table [role=grid]').getAttribute('aria-rowcount')) - 1 === n",
        arg=count,
    )


def test_browser_labels_by_click_and_key(browser_page):
    page, _ = browser_page
    page.click("#mrm-label-a")
    wait_for_rows(page, 1)
    page.click("#mrm-label-b")
    wait_for_rows(page, 2)

    # Keyboard shortcut: focus the page body, then press A.
    page.locator("#mrm-header").click()
    page.keyboard.press("a")
    wait_for_rows(page, 3)
    page.keyboard.press("s")
    page.wait_for_selector("#mrm-label-status:has-text('Skipped')")
    assert labelled_rows(page) == 3


def test_browser_identical_pair_warns_and_keeps_labels(browser_page):
    page, _ = browser_page
    page.fill("#mrm-summary-a textarea", "the same summary")
    page.fill("#mrm-summary-b textarea", "the same summary")
    page.click("#mrm-label-a")
    page.wait_for_selector("#mrm-label-status:has-text('identical')")
    assert labelled_rows(page) == 3


def test_browser_labels_survive_reload(browser_page):
    page, _ = browser_page
    page.reload()
    page.wait_for_selector("#mrm-label-status:has-text('Restored 3')")
    assert labelled_rows(page) == 3


def test_browser_delete_row(browser_page):
    page, _ = browser_page
    page.fill("#mrm-row-number input", "2")
    page.click("#mrm-delete-row")
    wait_for_rows(page, 2)
    page.click("#mrm-new-pair")
    page.click("#mrm-label-a")
    wait_for_rows(page, 3)
    page.screenshot(path=str(ARTIFACTS / "personalize_labels.png"), full_page=True)


def test_browser_upload_non_utf8_csv(browser_page, tmp_path):
    page, _ = browser_page
    path = tmp_path / "latin1_pairs.csv"
    path.write_bytes("prompt,chosen,rejected\nCaf\xe9 menu post,Caf\xe9 prices up,Food\n".encode("latin-1"))
    page.set_input_files("#mrm-upload input[type=file]", str(path))
    status = page.wait_for_selector("#mrm-label-status:has-text('Added 1 pair from')")
    assert "UTF-8" in status.inner_text()
    wait_for_rows(page, 4)


def test_browser_download_labels_csv(browser_page):
    page, _ = browser_page
    page.click("#mrm-download")
    link = page.wait_for_selector("#mrm-download-file a[download='labelled_pairs.csv']")
    assert link.is_visible()


def test_browser_adapt_shows_weights(browser_page):
    page, _ = browser_page
    page.click("#mrm-adapt")
    status = page.wait_for_selector("#mrm-adapt-status:has-text('Adapted on 4 labelled pairs')")
    assert re.search(r"Mixture weights: \[.*\] → \[.*\]", status.inner_text())
    page.wait_for_selector("#mrm-weights-plot canvas, #mrm-weights-plot svg")
    page.screenshot(path=str(ARTIFACTS / "personalize_adapted.png"), full_page=True)


def test_browser_adapted_profile_survives_reload(browser_page):
    page, _ = browser_page
    page.reload()
    status = page.wait_for_selector("#mrm-adapt-status:has-text('Restored the adapted profile')")
    assert "Score uses it now" in status.inner_text()


def test_browser_published_setting(browser_page):
    page, _ = browser_page
    page.click("#mrm-published")
    page.wait_for_function("() => document.querySelector('#mrm-lr input').value === '0.005'")
    assert page.input_value("#mrm-lr input") == "0.005"


def test_browser_score_ranks_candidates(browser_page):
    page, _ = browser_page
    page.click("#mrm-pick")
    page.wait_for_function("() => document.querySelector('#mrm-candidates textarea').value.length > 0")
    page.click("#mrm-score")
    page.wait_for_selector("#mrm-score-status:has-text('Scored')")
    assert page.locator("#mrm-score-table").inner_text().count("#") >= 2
    page.screenshot(path=str(ARTIFACTS / "personalize_scored.png"), full_page=True)


def test_browser_export_profile(browser_page):
    page, _ = browser_page
    page.click("#mrm-profile button:has-text('Personal profile')")
    page.click("#mrm-export")
    page.wait_for_selector("#mrm-profile-status:has-text('Profile written')")
    assert page.locator("#mrm-profile-file a[download='mrm_profile.json']").count() == 1


def test_browser_import_same_profile_twice(browser_page, tmp_path):
    page, _ = browser_page
    with page.expect_download() as download:
        page.click("#mrm-profile-file a[download='mrm_profile.json']")
    path = tmp_path / "mrm_profile.json"  # the upload box accepts .json names only
    download.value.save_as(path)

    for _ in range(2):
        page.set_input_files("#mrm-profile-upload input[type=file]", str(path))
        page.wait_for_selector("#mrm-adapt-status:has-text('Using the profile imported from')")
        # Adapting in between changes the status, so the second import must set it again.
        page.click("#mrm-adapt")
        page.wait_for_selector("#mrm-adapt-status:has-text('Adapted on')")


def test_browser_clear_all_needs_confirmation(browser_page):
    page, _ = browser_page
    page.click("#mrm-clear")
    page.wait_for_selector("#mrm-label-status:has-text('again')")
    assert labelled_rows(page) == 4

    page.click("#mrm-clear")
    page.wait_for_selector("#mrm-label-status:has-text('Cleared 4 labelled pairs')")
    page.click("#mrm-undo-clear")
    wait_for_rows(page, 4)
    assert "Brought back 4" in page.inner_text("#mrm-label-status")


def test_browser_makes_no_foreign_requests(browser_page):
    _, foreign_requests = browser_page
    assert foreign_requests == []
