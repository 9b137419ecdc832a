"""The app's API endpoints (`label`, `adapt`, `score`) driven by `gradio_client` against a live server."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from app_server import REPO_ROOT, free_port, launched_app
from gradio_client import Client

from mrm.model import MRM, save_mrm

POST = "My neighbour's dog barks from 6 am every day and I work night shifts. How do I raise it politely?"
PAIRS = [
    ("Neighbour's dog barks at 6 am, I work nights; how to bring it up politely?", "Dog noise."),
    ("Dog.", "Night-shift worker kept awake by neighbour's dog every morning; wants a polite approach."),
    ("Barking dog wakes me after night shifts, how to ask neighbour nicely?", "Neighbours are annoying."),
]


@pytest.fixture(scope="module")
def app_url():
    with launched_app() as url:
        yield url


def new_client(url: str) -> Client:
    return Client(url, verbose=False, download_files=False)


def weights_count(weights_plot: dict) -> int:
    """Return K, counted from the distinct base rewards of the weights bar plot."""
    return len({row[0].split()[0] for row in weights_plot["data"]})


def label(client: Client, choice: str, prompt: str, summary_a: str, summary_b: str) -> tuple:
    return client.predict(choice, prompt, summary_a, summary_b, api_name="/label")


def test_api_lists_main_endpoints(app_url):
    endpoints = new_client(app_url).view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/label", "/adapt", "/score"} <= set(endpoints)


def test_page_header_names_mode_and_reason(app_url):
    with urllib.request.urlopen(app_url + "config", timeout=10) as response:
        config = response.read().decode("utf-8")
    assert "Encoder:** `demo`" in config
    assert "offline demo: offline mode forced" in config


def test_label_adapt_score_round(app_url):
    client = new_client(app_url)
    for index, (summary_a, summary_b) in enumerate(PAIRS):
        stored, table, status, *_ = label(client, "A" if index % 2 == 0 else "B", POST, summary_a, summary_b)
    assert len(table["data"]) == len(PAIRS)
    assert stored[1]["chosen"] == PAIRS[1][1]

    profile, weights, curves, adapt_status = client.predict(30, 0.1, api_name="/adapt")
    assert f"Adapted on {len(PAIRS)} labelled pairs" in adapt_status
    assert len(profile["mixture_logits"]) == weights_count(weights)
    assert len(weights["data"]) == 2 * weights_count(weights)
    assert len(curves["data"]) == 2 * 31

    ranking, _, score_status = client.predict(POST, "\n".join(summary for summary, _ in PAIRS), api_name="/score")
    assert [row[0] for row in ranking["data"]] == [1, 2, 3]
    assert "Scored 3 candidates" in score_status


def test_label_skip_adds_nothing(app_url):
    client = new_client(app_url)
    _, table, status, *_ = label(client, "skip", POST, *PAIRS[0])
    assert table["data"] in ([], [["", "", ""]])
    assert "Skipped" in status


def test_label_identical_summaries_warns(app_url):
    client = new_client(app_url)
    label(client, "A", POST, *PAIRS[0])
    outputs = label(client, "A", POST, "same text", "same text")
    assert "identical" in outputs[2]
    _, table, *_ = label(client, "A", POST, *PAIRS[1])
    assert len(table["data"]) == 2


def test_adapt_without_labels_warns(app_url):
    *_, status = new_client(app_url).predict(30, 0.1, api_name="/adapt")
    assert "no labelled pairs" in status


def test_rejected_adapt_clears_plots(app_url):
    client = new_client(app_url)
    label(client, "A", POST, *PAIRS[0])
    client.predict(5, 0.1, api_name="/adapt")
    _, weights, curves, status = client.predict(5, 1e9, api_name="/adapt")
    assert "learning rate" in status
    assert weights is None
    assert curves is None


def test_rejected_score_clears_ranking(app_url):
    client = new_client(app_url)
    client.predict(POST, "one\ntwo", api_name="/score")
    ranking, flipped, status = client.predict(POST, "x" * 9000, api_name="/score")
    assert "limit" in status
    assert ranking["data"] in ([], [["", "", "", "", "", ""]])


def test_concurrent_clients_keep_separate_labels(app_url):
    def label_n(count: int) -> int:
        client = new_client(app_url)
        table = None
        for summary_a, summary_b in PAIRS[:count]:
            _, table, *_ = label(client, "A", POST, summary_a, summary_b)
        return len(table["data"])

    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(label_n, [1, 3])
    assert first == 1
    assert second == 3


def test_app_rejects_wrong_width_checkpoint(tmp_path):
    save_mrm(MRM(in_dim=16, hidden_layers=(2,)), tmp_path)
    process = subprocess.run(
        [sys.executable, "app.py", "--offline", "--checkpoint", str(tmp_path), "--port", str(free_port())],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
             "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert process.returncode != 0
    assert "in_dim=16" in process.stderr
    assert "-dim embeddings" in process.stderr
