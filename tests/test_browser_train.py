"""Train & evaluate tab in headless Chromium: start a real training run, watch progress, cancel it.

The app runs in offline demo mode with its runs folder in a temporary
directory. The data is a small synthetic embedding file given by path.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from app_server import REPO_ROOT, launched_app

from mrm.data import write_embedding_files
from mrm.jobs import JobManager

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (Debian package chromium)")


def synthetic_population(prefix: Path) -> tuple[Path, Path]:
    """Write 12 users with 8 training and 4 test pairs each, 16-wide embeddings."""
    torch.manual_seed(0)
    rows, users = [], {}
    for u in range(12):
        entries = []
        for p in range(12):
            entries.append({"chosen_idx": len(rows), "rejected_idx": len(rows) + 1, "split": "train" if p < 8 else "val"})
            rows += [torch.randn(16) + 0.5, torch.randn(16)]
        users[f"user{u:02d}"] = entries
    return write_embedding_files(prefix, torch.stack(rows), users)


def test_train_tab_start_progress_cancel(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    embed_pt, meta_json = synthetic_population(tmp_path / "data" / "prefs")
    runs_dir = tmp_path / "runs"
    ARTIFACTS.mkdir(exist_ok=True)

    try:
        with launched_app(env={"MRM_RUNS_DIR": str(runs_dir)}) as url, sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(30_000)
            page.goto(url)

            # Open the tab and give the data by path.
            page.get_by_role("tab", name=re.compile("Train")).click()
            page.locator("#mrm-train-source").get_by_text("Files on the server or uploaded").click()
            page.locator("#mrm-train-embed-pt").get_by_role("textbox").fill(str(embed_pt))
            page.locator("#mrm-train-meta-json").get_by_role("textbox").fill(str(meta_json))
            page.locator("#mrm-train-epochs").get_by_role("spinbutton").fill("5000")

            # Start, and wait until the trainer has finished at least one epoch.
            page.locator("#mrm-train-start").click()
            status = page.locator("#mrm-run-status")
            sync_api.expect(status).to_have_attribute("data-state", "running")
            sync_api.expect(status).to_contain_text(re.compile(r"epoch [1-9]\d* / 5000"), timeout=40_000)
            # The legend appears once the accuracy curves are drawn: after two evaluations (a
            # line needs two points) and the tab's next poll, which takes longer on a busy machine.
            sync_api.expect(page.locator("#mrm-train-curves")).to_contain_text("unseen", timeout=40_000)
            page.screenshot(path=str(ARTIFACTS / "train_running.png"), full_page=True)

            page.locator("#mrm-train-cancel").click()
            sync_api.expect(status).to_have_attribute("data-state", "cancelled")
            sync_api.expect(page.locator("#mrm-train-message")).to_contain_text("cancelled")
            page.screenshot(path=str(ARTIFACTS / "train_cancelled.png"), full_page=True)
            browser.close()
    finally:
        # A trainer runs in its own session and would outlive the app.
        JobManager(runs_dir, cancel_grace_s=2.0).cancel()

    assert JobManager(runs_dir).status().state == "cancelled"
