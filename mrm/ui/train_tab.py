"""The Train & evaluate tab: meta-train MRM on an embedding file and read the benchmark results.

Components and event wiring only. Jobs run through `mrm.jobs.JobManager`
(one at a time per server, as a subprocess writing a run folder). A
`gr.Timer` polls the shown run folder while its job runs. The event functions
below take and return plain values, so tests call them without a browser,
and `train_start`, `train_status` and `train_cancel` are API endpoints for
`gradio_client`.
"""

from __future__ import annotations

import functools
import html
import logging
import os
import re
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd
from matplotlib.figure import Figure

from mrm import jobs, train_options
from mrm.jobs import (
    JobBusyError,
    JobInputError,
    JobManager,
    RunNotFoundError,
    RunStatus,
)

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 2.0
SOURCE_DEMO = "Demo data"
SOURCE_FILES = "Files on the server or uploaded"
SOURCE_HUB = "Hub dataset"
SOURCES = (SOURCE_DEMO, SOURCE_FILES, SOURCE_HUB)
PRESET_CHOICES = [
    ("Demo (small, seconds on a CPU)", "demo"),
    ("Reddit TL;DR, 150 pairs per seen user (published)", "reddit150"),
    ("Reddit TL;DR, 100 pairs per seen user (published)", "reddit100"),
    ("PRISM (published)", "prism"),
]
# Hyperparameter inputs, in the order of their components and of the
# event functions' parameters.
SETTING_NAMES = (
    "dataset",
    "epochs",
    "seen_train_limit",
    "unseen_train_limit",
    "hidden_layers",
    "use_bias",
    "inner_lr",
    "meta_lr",
    "train_inner_epochs",
    "eval_inner_epochs",
    "tasks_per_batch",
    "warmup_ratio",
    "val_ratio",
    "rpo_ratio",
    "rpo_gamma",
    "score_threshold",
    "seed",
    "select_on",
    "log_freq",
    "save_freq",
    "device",
)
INT_SETTINGS = {
    "epochs",
    "seen_train_limit",
    "unseen_train_limit",
    "train_inner_epochs",
    "eval_inner_epochs",
    "tasks_per_batch",
    "seed",
    "log_freq",
    "save_freq",
}
DOWNLOAD_DIR = Path(tempfile.gettempdir()) / "mrm-train-downloads"


# ---------------------------------------------------------------------------
# Event functions


def preset_values(preset: str) -> list:
    """Return the values of the hyperparameter inputs for `preset`, in SETTING_NAMES order."""
    settings = train_options.preset_settings(preset)
    values = []
    for name in SETTING_NAMES:
        value = settings[name]
        if name == "hidden_layers":
            value = ", ".join(str(size) for size in value)
        elif name == "score_threshold":
            value = "" if value is None else str(value)
        values.append(value)
    return values


def settings_to_flags(**settings) -> dict:
    """Turn the hyperparameter inputs into trainer flags; raise JobInputError on a bad value."""
    flags = {}
    for name in SETTING_NAMES:
        value = settings.get(name)
        if name == "hidden_layers":
            value = _parse_layer_sizes(value)
        elif name == "score_threshold":
            value = _parse_optional_float(name, value)
        elif name in INT_SETTINGS:
            if value is None or float(value) != int(float(value)):
                raise JobInputError(f"{name} must be a whole number, got {value!r}")
            value = int(float(value))
        elif name == "use_bias":
            value = bool(value)
        elif isinstance(value, (int, float)):
            value = float(value)
        flags[name] = value

    train_options.check_train_settings(flags)
    # Passed explicitly, so that "false" also overrides a preset on the command line.
    flags["use_bias"] = "true" if flags["use_bias"] else "false"
    return flags


def _parse_optional_float(name: str, value) -> float | None:
    if value is None or not str(value).strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise JobInputError(f"{name} must be a number or empty, got {value!r}") from None


def _parse_layer_sizes(text) -> list[int]:
    parts = [part for part in str(text or "").replace(",", " ").split() if part]
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if not sizes or any(size < 1 for size in sizes):
        raise JobInputError(f"hidden layers must be positive whole numbers separated by commas, such as 2 or 8, 2; got {text!r}")
    return sizes


def resolve_data(source: str, embed_pt: str, meta_json: str, hub_repo: str) -> tuple[Path, Path, dict]:
    """Return the embedding file, its metadata file and a note on where they came from.

    Raises:
        JobInputError: the source is unknown or its files are missing or cannot be downloaded.
    """
    if source == SOURCE_DEMO:
        pt_path, json_path = train_options.demo_data_files()
        if not pt_path.is_file() or not json_path.is_file():
            raise JobInputError(
                f"the demo data is not built yet ({pt_path} is missing): run `python -m mrm demo build`, "
                "or choose another data source"
            )
        return pt_path, json_path, {"data_source": "demo", "encoder": "demo"}
    if source == SOURCE_FILES:
        if not (embed_pt or "").strip() or not (meta_json or "").strip():
            raise JobInputError("give both the embedding file (.pt) and the metadata file (.json), by path or upload")
        return Path(embed_pt.strip()), Path(meta_json.strip()), {"data_source": "files"}
    if source == SOURCE_HUB:
        pt_path, json_path = train_options.download_hub_dataset(hub_repo)
        return pt_path, json_path, {"data_source": f"hub:{hub_repo.strip()}"}
    raise JobInputError(f"unknown data source {source!r}; choose one of: {', '.join(SOURCES)}")


def start_training(
    manager: JobManager,
    source: str = SOURCE_DEMO,
    embed_pt: str = "",
    meta_json: str = "",
    hub_repo: str = "",
    *args,
    progress: gr.Progress | None = None,
    **settings,
):
    """Validate the inputs and start a run; return (message, run id or gr.skip()).

    Hyperparameters come as keywords named as in SETTING_NAMES, or positionally
    in that order after `hub_repo`.
    """
    settings = {**dict(zip(SETTING_NAMES, args)), **settings}
    try:
        flags = settings_to_flags(**settings)
        pt_path, json_path, metadata = resolve_data(source, embed_pt, meta_json, hub_repo)
        handle = manager.start({"embed_pt": pt_path, "meta_json": json_path, **flags}, metadata=metadata)
    except (JobBusyError, JobInputError) as error:
        logger.info("Training not started: %s", error)
        return _message(f"Not started: {error}", "warning"), gr.skip()

    return _message(f"Started run {handle.run_id} on {pt_path.name}.", "info"), handle.run_id


def show_run(manager: JobManager, run_id: str | None = None):
    """Return the view of run `run_id` (default: the running or newest run).

    Outputs: status HTML, accuracy curves, log tail, results table,
    per-user histogram, checkpoint download, push button, timer.
    """
    try:
        status = manager.status(run_id or None)
    except RunNotFoundError as error:
        return (
            _message(str(error), "warning"),
            None,
            "",
            _empty_results(),
            None,
            None,
            gr.Button(interactive=False),
            gr.Timer(active=False),
        )
    if status is None:
        return (
            _message("No runs yet. Choose data and settings, then start training.", "info"),
            None,
            "",
            _empty_results(),
            None,
            None,
            gr.Button(interactive=False),
            gr.Timer(active=False),
        )

    running = status.state == "running"
    results = _empty_results()
    histogram = None
    download = None
    if status.results is not None:
        results = train_options.results_table(status.results, _published_setting(status))
    if status.per_user_csv is not None and not running:
        histogram = accuracy_histogram(status.per_user_csv)
    if status.best_dir is not None and not running:
        download = _checkpoint_zip(status)

    can_push = bool(os.environ.get("HF_TOKEN")) and status.best_dir is not None and not running
    return (
        status_html(status),
        _curves(status),
        status.log_tail,
        results,
        histogram,
        download,
        gr.Button(interactive=can_push),
        gr.Timer(active=running),
    )


def cancel_training(manager: JobManager):
    """Cancel the running job; return (message, run id or gr.skip())."""
    status = manager.cancel()
    if status is None:
        return _message("No training job is running.", "info"), gr.skip()
    return _message(f"Run {status.run_id}: {status.state}.", "info"), status.run_id


def list_runs(manager: JobManager, run_id: str | None = None):
    """Return the runs dropdown with every run, showing `run_id` if it exists, else the running or newest run."""
    run_ids = manager.list_runs()
    if run_id not in run_ids:
        status = manager.status()
        run_id = status.run_id if status else None
    return gr.Dropdown(choices=run_ids, value=run_id)


def push_run(manager: JobManager, run_id: str, repo_id: str, encoder: str, private: bool) -> str:
    """Push the selected checkpoint of run `run_id` to the Hub repo `repo_id`; return a message."""
    from mrm.hub import HubError, push_checkpoint
    from mrm.model import CheckpointError, load_mrm

    if not os.environ.get("HF_TOKEN"):
        return _message("Pushing needs a Hugging Face token with write access: set HF_TOKEN and restart.", "warning")
    try:
        status = manager.status(run_id or None)
    except RunNotFoundError as error:
        return _message(str(error), "warning")
    if status is None or status.best_dir is None or status.state == "running":
        return _message("The run has no finished checkpoint to push yet.", "warning")

    card_info = {
        "encoder": (encoder or "").strip() or None,
        "training": {k: v for k, v in (status.config or {}).items() if k not in ("embed_pt", "meta_json", "output_path")},
        "results": status.results,
    }
    data_source = str(status.job.get("data_source", ""))
    if data_source.startswith("hub:"):
        card_info["dataset"] = data_source[len("hub:") :]
    try:
        model = load_mrm(status.best_dir)
        url = push_checkpoint(model, (repo_id or "").strip(), card_info, private=bool(private))
    except (HubError, CheckpointError, ValueError) as error:
        logger.warning("Pushing run %s to %r failed: %s", status.run_id, repo_id, error)
        return _message(f"Push failed: {error}", "warning")
    return _message(f"Pushed run {status.run_id}: {url}", "info")


def use_uploaded_file(path: str | None):
    """Copy an uploaded file's server path into its path box and select the files source."""
    if not path:
        return gr.skip(), gr.skip()
    return path, SOURCE_FILES


def source_visibility(source: str):
    """Show the inputs of the chosen data source only."""
    return gr.Group(visible=source == SOURCE_FILES), gr.Textbox(visible=source == SOURCE_HUB)


# ---------------------------------------------------------------------------
# Views


def status_html(status: RunStatus) -> str:
    """Render the state, the epoch and a progress bar of a run."""
    state = html.escape(status.state)
    parts = [f"<b>Run {html.escape(status.run_id)}</b>: <span class='mrm-state'>{state}</span>"]
    if status.epochs:
        epoch = status.epoch if status.epoch is not None else 0
        parts.append(f" · epoch {status.epoch if status.epoch is not None else '?'} / {status.epochs}")
        parts.append(f"<br><progress value='{epoch}' max='{status.epochs}' style='width:100%'></progress>")
    evaluation = last_evaluation_text(status.metrics)
    if evaluation:
        parts.append(f"<br><span class='mrm-last-eval'>{html.escape(evaluation)}</span>")
    if status.message:
        parts.append(f"<br><small>{html.escape(status.message)}</small>")
    run_id = html.escape(status.run_id, quote=True)
    return f"<div id='mrm-run-status' data-run='{run_id}' data-state='{state}'>{''.join(parts)}</div>"


def last_evaluation_text(metrics: list[dict]) -> str:
    """Describe the newest evaluation row, e.g. "Evaluation at epoch 5: seen 61.0%, unseen 58.0%".

    The accuracy plot draws lines only, so a run with one evaluation shows
    nothing there; this line makes that evaluation visible.
    """
    rows = [row for row in metrics if isinstance(row.get("epoch"), (int, float))]
    if not rows:
        return ""
    row = rows[-1]
    values = [f"{split} {row[split]:.1%}" for split in jobs.METRIC_SPLITS if isinstance(row.get(split), (int, float))]
    if not values:
        return ""
    count = f" ({len(rows)} evaluations so far)" if len(rows) > 1 else ""
    return f"Evaluation at epoch {row['epoch']:g}: {', '.join(values)}{count}."


SCROLL_LOG_JS = """
() => {
  setTimeout(() => {
    const area = document.querySelector("#mrm-train-log textarea");
    if (area) area.scrollTop = area.scrollHeight;
  }, 50);
}
"""

_STATUS_KEY = re.compile(r"data-run='([^']*)' data-state='([^']*)'")


def run_key(status_markup: str | None) -> str | None:
    """Return "RUN_ID:STATE" of a `status_html` output, or None when it shows no run."""
    match = _STATUS_KEY.search(status_markup or "")
    return f"{match.group(1)}:{match.group(2)}" if match else None


def drop_stale_message(shown_for: str | None, status_markup: str | None):
    """Clear the start/cancel message once the run it was written for changes state.

    `shown_for` is the `run_key` of the status shown right after the message
    was written. Returns (message update, new `shown_for`).
    """
    if shown_for is None or run_key(status_markup) == shown_for:
        return gr.skip(), gr.skip()
    return "", None


def accuracy_histogram(per_user_csv: Path) -> Figure | None:
    """Plot the distribution of per-user accuracy after adaptation, seen and unseen users apart."""
    try:
        table = pd.read_csv(per_user_csv)
    except (OSError, ValueError) as error:
        logger.warning("Could not read %s: %s", per_user_csv, error)
        return None
    if table.empty or "acc_adapted" not in table:
        return None

    figure = Figure(figsize=(6, 3), layout="constrained")
    axes = figure.add_subplot()
    bins = [i / 10 for i in range(11)]
    for split, color in (("seen", "#4c72b0"), ("unseen", "#dd8452")):
        values = table.loc[table.get("split") == split, "acc_adapted"].dropna()
        if len(values):
            axes.hist(values, bins=bins, alpha=0.6, color=color, label=f"{split} ({len(values)} users)")
    axes.set_xlabel("user accuracy after adaptation")
    axes.set_ylabel("users")
    axes.set_xlim(0, 1)
    # Above the axes, so that the legend covers no bar.
    figure.legend(loc="outside upper center", ncols=2, frameon=False)
    return figure


def _published_setting(status: RunStatus) -> str | None:
    # Published figures are compared only with runs on real data, not the demo bundle.
    if status.job.get("data_source") == "demo":
        return None
    return train_options.published_setting(status.config)


def _checkpoint_zip(status: RunStatus) -> str | None:
    try:
        DOWNLOAD_DIR.mkdir(parents=True, exist_ok=True)
        return str(train_options.zip_checkpoint(status.best_dir, DOWNLOAD_DIR))
    except OSError as error:
        logger.warning("Could not zip the checkpoint of run %s: %s", status.run_id, error)
        return None


def _message(text: str, level: str) -> str:
    css = "mrm-warning" if level == "warning" else "mrm-info"
    return f"<div class='{css}' id='mrm-train-message'>{html.escape(text)}</div>"


def _curves(status: RunStatus) -> pd.DataFrame | None:
    # NOTE: gradio 6.31's LinePlot draws no lines for any later value once it
    # has shown an empty frame with a color column, so "no points yet" is None.
    frame = jobs.metrics_long_frame(status.metrics)
    return None if frame.empty else frame


def _empty_results() -> pd.DataFrame:
    return train_options.results_table(None)


# ---------------------------------------------------------------------------
# Layout and wiring


def _runs_dir(runtime) -> Path:
    configured = getattr(runtime, "runs_dir", None)
    return Path(configured) if configured else jobs.default_runs_dir()


def build_train_tab(runtime=None, demo: gr.Blocks | None = None, manager: JobManager | None = None) -> None:
    """Build the tab's components and events inside the caller's Blocks context.

    Args:
        runtime: the app's runtime; its `runs_dir` attribute, when present, sets the runs folder.
        demo: the enclosing Blocks, for the page-load event; found from the context when None.
        manager: the job manager; by default this process's shared manager of the runs folder.
    """
    manager = manager or jobs.shared_manager(_runs_dir(runtime))
    demo = demo or gr.context.Context.root_block
    defaults = dict(zip(SETTING_NAMES, preset_values("demo")))

    gr.Markdown(
        "Meta-train an MRM head on an embedding file, then evaluate it on seen and unseen users. "
        "One training job runs at a time on this server; runs are kept under "
        f"`{manager.runs_dir}` and shown again after a restart."
    )
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("### Data")
            source = gr.Radio(list(SOURCES), value=SOURCE_DEMO, label="Data source", elem_id="mrm-train-source")
            with gr.Group(visible=False) as files_group:
                embed_pt = gr.Textbox("", label="Embedding file (.pt), path on the server", elem_id="mrm-train-embed-pt")
                meta_json = gr.Textbox("", label="Metadata file (.json), path on the server", elem_id="mrm-train-meta-json")
                with gr.Row():
                    pt_upload = gr.File(label="or upload the .pt", file_types=[".pt"], type="filepath", height=120)
                    json_upload = gr.File(label="or upload the .json", file_types=[".json"], type="filepath", height=120)
            hub_repo = gr.Textbox(
                "",
                label="Hub dataset repo id",
                placeholder="org/name (a dataset repo with one .pt and its .json)",
                visible=False,
            )

            gr.Markdown("### Hyperparameters")
            preset = gr.Dropdown(PRESET_CHOICES, value="demo", label="Preset (fills the settings below)")
            with gr.Row():
                dataset = gr.Radio(["REDDIT", "PRISM"], value=defaults["dataset"], label="Dataset (how pairs are split)")
                epochs = gr.Number(defaults["epochs"], label="Epochs", precision=0, minimum=1, elem_id="mrm-train-epochs")
            with gr.Row():
                seen_train_limit = gr.Number(
                    defaults["seen_train_limit"], label="Training pairs per seen user (-1: all)", precision=0
                )
                unseen_train_limit = gr.Number(
                    defaults["unseen_train_limit"], label="Training pairs per unseen user (-1: all)", precision=0
                )
            with gr.Row():
                inner_lr = gr.Number(defaults["inner_lr"], label="Inner learning rate")
                meta_lr = gr.Number(defaults["meta_lr"], label="Meta learning rate")
            with gr.Accordion("More settings", open=False):
                with gr.Row():
                    hidden_layers = gr.Textbox(defaults["hidden_layers"], label="Layer sizes (last = K base rewards)")
                    use_bias = gr.Checkbox(defaults["use_bias"], label="Bias in the linear layers")
                with gr.Row():
                    train_inner_epochs = gr.Number(defaults["train_inner_epochs"], label="Inner steps in training", precision=0)
                    eval_inner_epochs = gr.Number(defaults["eval_inner_epochs"], label="Inner steps at evaluation", precision=0)
                    tasks_per_batch = gr.Number(defaults["tasks_per_batch"], label="Users per outer step", precision=0)
                with gr.Row():
                    warmup_ratio = gr.Number(defaults["warmup_ratio"], label="Warm-up fraction")
                    val_ratio = gr.Number(defaults["val_ratio"], label="Query fraction of a user's pairs")
                with gr.Row():
                    rpo_ratio = gr.Number(defaults["rpo_ratio"], label="RPO ratio")
                    rpo_gamma = gr.Number(defaults["rpo_gamma"], label="RPO temperature")
                    score_threshold = gr.Textbox("", label="Score-gap threshold (empty: none)")
                with gr.Row():
                    seed = gr.Number(defaults["seed"], label="Seed", precision=0)
                    select_on = gr.Dropdown(
                        ["val", "test", "last"],
                        value=defaults["select_on"],
                        label="Epoch selection (test: published protocol, optimistic)",
                    )
                with gr.Row():
                    log_freq = gr.Number(defaults["log_freq"], label="Evaluate every N epochs", precision=0)
                    save_freq = gr.Number(defaults["save_freq"], label="Checkpoint every N epochs (0: never)", precision=0)
                    device = gr.Dropdown(
                        ["auto", "cpu", "cuda"], value=defaults["device"], label="Device", allow_custom_value=True
                    )
            with gr.Row():
                start_button = gr.Button("Start training", variant="primary", elem_id="mrm-train-start")
                cancel_button = gr.Button("Cancel", variant="stop", elem_id="mrm-train-cancel")
            message = gr.HTML(elem_id="mrm-train-message-box")

        with gr.Column(scale=3, min_width=400):
            with gr.Row():
                runs = gr.Dropdown([], label="Run", allow_custom_value=True, scale=3, elem_id="mrm-train-runs")
                refresh_button = gr.Button("Refresh", scale=1, elem_id="mrm-train-refresh")
            status = gr.HTML(elem_id="mrm-train-status")
            curves = gr.LinePlot(
                None,
                x="epoch",
                y="accuracy",
                color="split",
                y_lim=[0, 1],
                title="User-level test accuracy during training",
                elem_id="mrm-train-curves",
                height=260,
            )
            log_tail = gr.Textbox(
                label="Log (last 40 lines)", lines=12, max_lines=12, autoscroll=True, interactive=False, elem_id="mrm-train-log"
            )
            results = gr.Dataframe(
                _empty_results(),
                label="Benchmark evaluation (user-level accuracy, %)",
                interactive=False,
                elem_id="mrm-train-results",
            )
            histogram = gr.Plot(label="Per-user accuracy")
            download = gr.File(label="Selected checkpoint (zip of best/)", interactive=False)
            with gr.Accordion("Push the checkpoint to the Hugging Face Hub", open=False):
                token_note = "" if os.environ.get("HF_TOKEN") else " Set HF_TOKEN to a write token to enable it."
                gr.Markdown("Uploads `best/` with a model card that lists the settings and results." + token_note)
                with gr.Row():
                    push_repo = gr.Textbox("", label="Repo id", placeholder="your-name/mrm-head")
                    push_encoder = gr.Textbox(
                        "Skywork/Skywork-Reward-V2-Llama-3.1-8B", label="Encoder that produced the embeddings"
                    )
                    push_private = gr.Checkbox(True, label="Private")
                push_button = gr.Button("Push to Hub", interactive=False)
                push_message = gr.HTML()
    timer = gr.Timer(POLL_INTERVAL_S, active=False)
    message_shown_for = gr.State(None)  # run_key of the status when `message` was written

    settings = [
        dataset,
        epochs,
        seen_train_limit,
        unseen_train_limit,
        hidden_layers,
        use_bias,
        inner_lr,
        meta_lr,
        train_inner_epochs,
        eval_inner_epochs,
        tasks_per_batch,
        warmup_ratio,
        val_ratio,
        rpo_ratio,
        rpo_gamma,
        score_threshold,
        seed,
        select_on,
        log_freq,
        save_freq,
        device,
    ]
    view = [status, curves, log_tail, results, histogram, download, push_button, timer]

    # Named wrappers give the API endpoints readable parameter names.
    def train_start(
        source,
        embed_pt,
        meta_json,
        hub_repo,
        dataset,
        epochs,
        seen_train_limit,
        unseen_train_limit,
        hidden_layers,
        use_bias,
        inner_lr,
        meta_lr,
        train_inner_epochs,
        eval_inner_epochs,
        tasks_per_batch,
        warmup_ratio,
        val_ratio,
        rpo_ratio,
        rpo_gamma,
        score_threshold,
        seed,
        select_on,
        log_freq,
        save_freq,
        device,
        progress=gr.Progress(track_tqdm=True),
    ):
        """Start a meta-training run and return a message and the new run id."""
        named = {name: value for name, value in locals().items() if name in SETTING_NAMES}
        return start_training(manager, source, embed_pt, meta_json, hub_repo, **named)

    def train_cancel():
        """Cancel the running training job."""
        return cancel_training(manager)

    def train_status(run_id=""):
        """Return the state, curves, log tail, results table, histogram and checkpoint of a run.

        An empty run id selects the running or newest run.
        """
        return show_run(manager, run_id)[:6]

    def refresh_view(run_id):
        return show_run(manager, run_id)

    def refresh_controls(run_id):
        return show_run(manager, run_id)[6:]

    def refresh_runs(run_id):
        return list_runs(manager, run_id)

    private = {"api_visibility": "private", "show_progress": "hidden"}

    def remember_status(status_markup):
        return run_key(status_markup)

    stale_check = (drop_stale_message, [message_shown_for, status], [message, message_shown_for])

    source.change(source_visibility, [source], [files_group, hub_repo], api_visibility="private")
    pt_upload.upload(use_uploaded_file, [pt_upload], [embed_pt, source], api_visibility="private")
    json_upload.upload(use_uploaded_file, [json_upload], [meta_json, source], api_visibility="private")
    preset.input(preset_values, [preset], settings, api_visibility="private")

    # The API endpoints return plain values. Private follow-up events update
    # the run list, the push button and the poll timer.
    start_button.click(
        train_start, [source, embed_pt, meta_json, hub_repo, *settings], [message, runs], api_name="train_start"
    ).then(refresh_runs, [runs], [runs], **private).then(refresh_view, [runs], view, **private).then(
        remember_status, [status], [message_shown_for], **private
    )
    refresh_button.click(train_status, [runs], view[:6], api_name="train_status").then(
        refresh_runs, [runs], [runs], **private
    ).then(refresh_controls, [runs], view[6:], **private).then(*stale_check, **private)
    cancel_button.click(train_cancel, None, [message, runs], api_name="train_cancel").then(
        refresh_runs, [runs], [runs], **private
    ).then(refresh_view, [runs], view, **private).then(remember_status, [status], [message_shown_for], **private)
    runs.input(refresh_view, [runs], view, api_visibility="private").then(*stale_check, **private)
    # gradio 6.31 does not autoscroll a non-interactive Textbox, so this scrolls to the newest line.
    log_tail.change(None, None, None, js=SCROLL_LOG_JS)
    timer.tick(refresh_view, [runs], view, **private).then(*stale_check, **private)
    push_button.click(
        functools.partial(push_run, manager),
        [runs, push_repo, push_encoder, push_private],
        [push_message],
        api_visibility="private",
    )

    if demo is not None:
        demo.load(refresh_runs, [runs], [runs], **private).then(refresh_view, [runs], view, **private)
