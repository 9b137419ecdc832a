"""Train & evaluate tab: its event functions called directly, and its API endpoints over a live server.

Jobs run the stand-in trainer of test_jobs.py, which writes the files of a
run folder without training anything.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest
import torch
from app_server import free_port
from gradio_client import Client
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from test_jobs import STAND_IN_TRAINER

from mrm import jobs, train_options
from mrm.data import write_embedding_files
from mrm.demo_build import BuildConfig
from mrm.jobs import JobInputError, JobManager
from mrm.ui import train_tab
from mrm.ui.train_tab import SETTING_NAMES, SOURCE_DEMO, SOURCE_FILES, SOURCE_HUB


@pytest.fixture
def data_files(tmp_path: Path) -> tuple[Path, Path]:
    users = {
        f"u{u}": [{"chosen_idx": 2 * p, "rejected_idx": 2 * p + 1, "split": "train" if p < 3 else "val"} for p in range(4)]
        for u in range(2)
    }
    return write_embedding_files(tmp_path / "data" / "prefs", torch.randn(8, 4), users)


@pytest.fixture
def manager(tmp_path: Path) -> JobManager:
    script = tmp_path / "stand_in_trainer.py"
    script.write_text(STAND_IN_TRAINER)
    return JobManager(tmp_path / "runs", command=[sys.executable, str(script)], cancel_grace_s=2.0)


def settings(**overrides) -> dict:
    values = dict(zip(SETTING_NAMES, train_tab.preset_values("demo")))
    values.update(overrides)
    return values


def start_files(manager, data_files, **overrides):
    """Start a stand-in run of 2 epochs (unless overridden) on the files."""
    embed_pt, meta_json = data_files
    values = settings(**{"epochs": 2, **overrides})
    return train_tab.start_training(manager, SOURCE_FILES, str(embed_pt), str(meta_json), "", **values)


def wait_until_finished(manager: JobManager, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = manager.status()
        if status is not None and status.finished:
            return status
        time.sleep(0.05)
    raise TimeoutError(f"no run finished within {timeout_s} s")


def as_dict(view: tuple) -> dict:
    names = ["status", "curves", "log", "results", "histogram", "download", "push", "timer"]
    return dict(zip(names, view))


# ---------------------------------------------------------------------------
# Presets and settings


@pytest.mark.parametrize(
    ("preset", "name", "expected"),
    [
        ("reddit150", "seen_train_limit", 150),
        ("reddit100", "seen_train_limit", 100),
        ("prism", "dataset", "PRISM"),
        ("prism", "inner_lr", 1e-3),
        ("demo", "hidden_layers", str(BuildConfig().num_bases)),
        ("demo", "inner_lr", BuildConfig().inner_lr),
        ("demo", "epochs", train_options.DEMO_PRESET_EPOCHS),
    ],
)
def test_preset_values_fill_inputs(preset, name, expected):
    values = dict(zip(SETTING_NAMES, train_tab.preset_values(preset)))
    assert values[name] == expected


def test_preset_values_unknown_raises():
    with pytest.raises(JobInputError, match="unknown preset"):
        train_tab.preset_values("reddit999")


def test_settings_to_flags_parses_layers():
    flags = train_tab.settings_to_flags(**settings(hidden_layers="8, 2"))
    assert flags["hidden_layers"] == [8, 2]


def test_settings_to_flags_keeps_false_bias():
    flags = train_tab.settings_to_flags(**settings(use_bias=False))
    assert flags["use_bias"] == "false"


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("hidden_layers", "two", "hidden layers"),
        ("hidden_layers", "0", "hidden layers"),
        ("epochs", 2.5, "whole number"),
        ("val_ratio", 1.5, "val_ratio"),
        ("select_on", "best", "select_on"),
    ],
)
def test_settings_to_flags_rejects_bad_value(name, value, match):
    with pytest.raises(JobInputError, match=match):
        train_tab.settings_to_flags(**settings(**{name: value}))


# ---------------------------------------------------------------------------
# Data sources


def test_resolve_data_files(data_files):
    embed_pt, meta_json, metadata = train_tab.resolve_data(SOURCE_FILES, str(data_files[0]), str(data_files[1]), "")
    assert (embed_pt, meta_json) == data_files
    assert metadata["data_source"] == "files"


def test_resolve_data_files_need_both():
    with pytest.raises(JobInputError, match="both"):
        train_tab.resolve_data(SOURCE_FILES, "x.pt", " ", "")


def test_resolve_data_demo_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(train_options, "demo_data_files", lambda: (tmp_path / "demo_prefs.pt", tmp_path / "demo_prefs.json"))
    with pytest.raises(JobInputError, match="python -m mrm demo build"):
        train_tab.resolve_data(SOURCE_DEMO, "", "", "")


def test_resolve_data_demo_present(monkeypatch, data_files):
    monkeypatch.setattr(train_options, "demo_data_files", lambda: data_files)
    _, _, metadata = train_tab.resolve_data(SOURCE_DEMO, "", "", "")
    assert metadata == {"data_source": "demo", "encoder": "demo"}


def test_hub_dataset_offline_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(JobInputError, match="not reachable"):
        train_options.download_hub_dataset("someone/prefs", cache_dir=tmp_path / "hub")


def test_hub_dataset_empty_repo_id():
    with pytest.raises(JobInputError, match="no Hub dataset repo id"):
        train_tab.resolve_data(SOURCE_HUB, "", "", "  ")


def test_hub_dataset_from_local_cache(monkeypatch, tmp_path, data_files):
    # The layout huggingface_hub uses for a cached dataset repo.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "datasets--someone--prefs"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for path in data_files:
        (snapshot / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    embed_pt, meta_json = train_options.download_hub_dataset("someone/prefs", cache_dir=tmp_path / "hub")

    assert embed_pt == snapshot / "prefs.pt"
    assert meta_json == snapshot / "prefs.json"


def test_pick_embedding_pair_two_pt_files(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"")
    (tmp_path / "b.pt").write_bytes(b"")
    with pytest.raises(JobInputError, match="exactly one .pt"):
        train_options.pick_embedding_pair(tmp_path, "the folder")


def test_use_uploaded_file_selects_files_source():
    assert train_tab.use_uploaded_file("/tmp/gradio/x.pt") == ("/tmp/gradio/x.pt", SOURCE_FILES)


# ---------------------------------------------------------------------------
# Starting, watching, cancelling


def test_start_training_reports_run(manager, data_files):
    message, run_id = start_files(manager, data_files)
    wait_until_finished(manager)

    assert f"Started run {run_id}" in message
    assert manager.list_runs() == [run_id]


def test_start_training_busy_message(manager, data_files):
    start_files(manager, data_files, epochs=100)
    try:
        run_id = manager.active_run_id()
        message, _ = start_files(manager, data_files)
        assert f"a training job is already running (run {run_id})" in message
        assert manager.list_runs() == [run_id]
    finally:
        manager.cancel()


def test_start_training_bad_file_starts_nothing(manager, tmp_path, data_files):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")

    message, _ = train_tab.start_training(manager, SOURCE_FILES, str(data_files[0]), str(broken), "", **settings())

    assert "Not started" in message
    assert "not valid JSON" in message
    assert manager.list_runs() == []


def test_start_training_bad_setting_starts_nothing(manager, data_files):
    message, _ = start_files(manager, data_files, val_ratio=0)
    assert "val_ratio" in message
    assert manager.list_runs() == []


def test_start_training_positional_settings(manager, data_files):
    values = [settings()[name] for name in SETTING_NAMES]
    message, _ = train_tab.start_training(manager, SOURCE_FILES, str(data_files[0]), str(data_files[1]), "", *values)
    wait_until_finished(manager)
    assert "Started run" in message


def test_show_run_without_runs(manager):
    view = as_dict(train_tab.show_run(manager, None))
    assert "No runs yet" in view["status"]
    assert view["timer"].active is False


def test_show_run_running_keeps_timer(manager, data_files):
    start_files(manager, data_files, epochs=100)
    try:
        view = as_dict(train_tab.show_run(manager, None))
        assert "data-state='running'" in view["status"]
        assert view["timer"].active is True
        assert view["results"]["model"].tolist() == []
    finally:
        manager.cancel()


def test_show_run_finished_results(manager, data_files):
    start_files(manager, data_files)
    wait_until_finished(manager)
    view = as_dict(train_tab.show_run(manager, None))

    assert "data-state='done'" in view["status"]
    assert view["timer"].active is False
    assert view["results"].iloc[0].tolist() == ["MRM, this run (adapted)", "61.0", "60.0", "60.5", "40.0"]
    assert view["results"].iloc[1]["model"] == "meta-initialisation (no adaptation)"
    assert isinstance(view["histogram"], Figure)
    assert Path(view["download"]).suffix == ".zip"


def test_show_run_curves_long_format(manager, data_files):
    start_files(manager, data_files)
    wait_until_finished(manager)
    curves = as_dict(train_tab.show_run(manager, None))["curves"]

    assert isinstance(curves, pd.DataFrame)
    assert len(curves) == 2 * 3


def test_show_run_published_row_for_real_data(manager, data_files):
    # The stand-in trainer's config is Reddit with 100 pairs per seen user.
    start_files(manager, data_files)
    wait_until_finished(manager)
    results = as_dict(train_tab.show_run(manager, None))["results"]

    assert results.iloc[-1].tolist() == [
        "MRM, published (Reddit TL;DR, 100 training pairs per seen user)",
        "69.6",
        "n/a",
        "n/a",
        "n/a",
    ]


def test_show_run_no_published_row_for_demo(monkeypatch, manager, data_files):
    monkeypatch.setattr(train_options, "demo_data_files", lambda: data_files)
    train_tab.start_training(manager, SOURCE_DEMO, "", "", "", **settings(epochs=2))
    wait_until_finished(manager)
    results = as_dict(train_tab.show_run(manager, None))["results"]

    assert len(results) == 2


def test_show_run_push_needs_token(monkeypatch, manager, data_files):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    start_files(manager, data_files)
    wait_until_finished(manager)
    assert as_dict(train_tab.show_run(manager, None))["push"].interactive is False


def test_show_run_push_enabled_with_token(monkeypatch, manager, data_files):
    monkeypatch.setenv("HF_TOKEN", "hf_placeholder")
    start_files(manager, data_files)
    wait_until_finished(manager)
    assert as_dict(train_tab.show_run(manager, None))["push"].interactive is True


def test_push_run_without_token_message(monkeypatch, manager):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert "set HF_TOKEN" in train_tab.push_run(manager, "", "me/head", "demo", True)


def test_show_run_unknown_run(manager):
    assert "not found" in as_dict(train_tab.show_run(manager, "20990101-000000"))["status"]


def test_show_run_interrupted(tmp_path):
    run_dir = tmp_path / "runs" / "20240101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "job.json").write_text(json.dumps({"run_id": run_dir.name, "pid": 2**22 + 1, "finished_at": None}))
    (run_dir / "progress.json").write_text(json.dumps({"status": "running", "epoch": 3, "epochs": 9}))

    view = as_dict(train_tab.show_run(JobManager(tmp_path / "runs"), None))

    assert "data-state='interrupted'" in view["status"]
    assert "epoch 3 / 9" in view["status"]


def test_cancel_training_reports_cancelled(manager, data_files):
    start_files(manager, data_files, epochs=100)
    message, run_id = train_tab.cancel_training(manager)

    assert "cancelled" in message
    assert run_id == manager.list_runs()[0]


def test_cancel_training_without_job(manager):
    message, _ = train_tab.cancel_training(manager)
    assert "No training job is running" in message


def test_list_runs_keeps_selected_run(manager, data_files):
    start_files(manager, data_files)
    wait_until_finished(manager)
    first = manager.list_runs()[0]
    start_files(manager, data_files)
    wait_until_finished(manager)

    assert train_tab.list_runs(manager, first).value == first


def test_accuracy_histogram_unreadable_file(tmp_path):
    assert train_tab.accuracy_histogram(tmp_path / "missing.csv") is None


def test_accuracy_histogram_legend_outside_bars(tmp_path):
    path = tmp_path / "per_user.csv"
    rows = [f"u{i},{'seen' if i % 2 else 'unseen'},5,5,0.5,{0.05 + i / 25:.2f}" for i in range(20)]
    path.write_text("user_id,split,train_pairs,test_pairs,acc_init,acc_adapted\n" + "\n".join(rows) + "\n")
    figure = train_tab.accuracy_histogram(path)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    legend_box = figure.legends[0].get_window_extent(renderer)
    axes_box = figure.axes[0].get_window_extent(renderer)
    assert legend_box.y0 >= axes_box.y1


def run_status(tmp_path, metrics: list[dict], state: str = "running") -> jobs.RunStatus:
    return jobs.RunStatus(run_id="20260101-000000", run_dir=tmp_path, state=state, epoch=5, epochs=5,
                          metrics=metrics)


def test_last_evaluation_text_single_row():
    text = train_tab.last_evaluation_text([{"epoch": 5, "seen": 0.61, "unseen": 0.58, "overall": 0.6}])
    assert text == "Evaluation at epoch 5: seen 61.0%, unseen 58.0%, overall 60.0%."


def test_last_evaluation_text_counts_rows():
    rows = [{"epoch": 5, "overall": 0.5}, {"epoch": 10, "overall": 0.7}]
    assert train_tab.last_evaluation_text(rows) == "Evaluation at epoch 10: overall 70.0% (2 evaluations so far)."


def test_last_evaluation_text_no_rows():
    assert train_tab.last_evaluation_text([]) == ""


def test_status_html_shows_single_evaluation(tmp_path):
    markup = train_tab.status_html(run_status(tmp_path, [{"epoch": 5, "seen": 0.61, "unseen": 0.58}]))
    assert "Evaluation at epoch 5: seen 61.0%, unseen 58.0%" in markup


def test_run_key_of_status_html(tmp_path):
    assert train_tab.run_key(train_tab.status_html(run_status(tmp_path, [], "done"))) == "20260101-000000:done"


def test_run_key_without_run():
    assert train_tab.run_key("<div class='mrm-info'>No runs yet.</div>") is None


def test_drop_stale_message_after_state_change(tmp_path):
    markup = train_tab.status_html(run_status(tmp_path, [], "done"))
    assert train_tab.drop_stale_message("20260101-000000:running", markup) == ("", None)


def test_drop_stale_message_same_state_kept(tmp_path):
    markup = train_tab.status_html(run_status(tmp_path, [], "running"))
    message, shown_for = train_tab.drop_stale_message("20260101-000000:running", markup)
    assert isinstance(message, type(gr.skip()))
    assert isinstance(shown_for, type(gr.skip()))


# ---------------------------------------------------------------------------
# API endpoints over a live server


@pytest.fixture
def api_client(manager):
    with gr.Blocks() as demo:
        train_tab.build_train_tab(manager=manager)
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(url, verbose=False, download_files=False)
    finally:
        demo.close()


def test_api_lists_train_endpoints(api_client):
    endpoints = api_client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/train_start", "/train_status", "/train_cancel"} <= set(endpoints)


def test_api_start_status_cancel(api_client, manager, data_files):
    message, run_id = api_client.predict(
        source=SOURCE_FILES,
        embed_pt=str(data_files[0]),
        meta_json=str(data_files[1]),
        epochs=100,
        api_name="/train_start",
    )
    status = api_client.predict(run_id=run_id, api_name="/train_status")
    cancel_message, cancelled_run_id = api_client.predict(api_name="/train_cancel")

    assert f"Started run {run_id}" in message
    assert "data-state='running'" in status[0]
    assert "cancelled" in cancel_message
    assert cancelled_run_id == run_id
    assert manager.status(run_id).state == "cancelled"


def test_api_start_rejects_missing_file(api_client, manager, tmp_path, data_files):
    message, _ = api_client.predict(
        source=SOURCE_FILES, embed_pt=str(tmp_path / "nope.pt"), meta_json=str(data_files[1]), api_name="/train_start"
    )
    assert "not found" in message
    assert manager.list_runs() == []


def test_api_status_of_finished_run(api_client, manager, data_files):
    start_files(manager, data_files)
    run_id = wait_until_finished(manager).run_id
    view = api_client.predict(run_id=run_id, api_name="/train_status")

    assert "data-state='done'" in view[0]
    assert view[3]["data"][0][0] == "MRM, this run (adapted)"


def test_show_run_no_metrics_curves_none(tmp_path):
    run_dir = tmp_path / "runs" / "20240101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "progress.json").write_text(json.dumps({"status": "failed", "epoch": -1, "epochs": 9}))

    view = as_dict(train_tab.show_run(JobManager(tmp_path / "runs"), None))

    assert view["curves"] is None


def test_push_run_sends_checkpoint_and_card(monkeypatch, manager, data_files):
    import mrm.hub
    from mrm.model import MRM, save_mrm

    pushed = {}

    def fake_push(model, repo_id, card_info, token=None, private=False):
        pushed.update(model=model, repo_id=repo_id, card_info=card_info, private=private)
        return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setenv("HF_TOKEN", "hf_placeholder")
    monkeypatch.setattr(mrm.hub, "push_checkpoint", fake_push)
    start_files(manager, data_files)
    status = wait_until_finished(manager)
    save_mrm(MRM(in_dim=4, hidden_layers=(2,)), status.run_dir / "best")

    message = train_tab.push_run(manager, status.run_id, " me/head ", "demo", True)

    assert "Pushed run" in message
    assert pushed["repo_id"] == "me/head"
    assert pushed["model"].in_dim == 4
    assert pushed["card_info"]["encoder"] == "demo"
    assert pushed["card_info"]["results"]["seen"] == pytest.approx(0.61)
    assert pushed["private"] is True


def test_push_run_bad_checkpoint_message(monkeypatch, manager, data_files):
    monkeypatch.setenv("HF_TOKEN", "hf_placeholder")
    start_files(manager, data_files)
    status = wait_until_finished(manager)

    # The stand-in trainer's best/ folder contains no weights.
    assert "Push failed" in train_tab.push_run(manager, status.run_id, "me/head", "demo", False)
