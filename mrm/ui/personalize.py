"""The Personalize tab: label pairs, adapt the mixture logits, score new candidates.

Components and event wiring only; the logic lives in `mrm.session`. Per-session
state is the labels (`gr.State`, mirrored into `gr.BrowserState` so that a page
reload keeps them) and the adapted mixture logits (`gr.State`, K floats).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import tempfile
import uuid
from pathlib import Path

import gradio as gr

from mrm import session
from mrm.session import InputError

logger = logging.getLogger(__name__)

# Keyboard shortcuts for labelling: A, B and S click the buttons when no text field has focus.
SHORTCUTS_JS = """
() => {
  const keys = {a: "mrm-label-a", b: "mrm-label-b", s: "mrm-label-skip"};
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    const tag = (target && target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || tag === "select" || (target && target.isContentEditable)) return;
    const id = keys[event.key.toLowerCase()];
    const button = id && document.getElementById(id);
    if (button) {
      event.preventDefault();
      button.click();
    }
  });
}
"""


def _load_corpus() -> list:
    # Without the demo corpus the page still works with typed-in texts.
    try:
        from mrm.demo import load_corpus

        return load_corpus()
    except (ImportError, OSError, ValueError) as error:
        logger.warning("example corpus not available, labelling needs typed-in texts: %s", error)
        return []


def _warn(error: Exception) -> str:
    gr.Warning(str(error))
    return f"**Warning:** {error}"


def build_personalize_tab(runtime, demo: gr.Blocks) -> None:
    """Build the Personalize tab inside the current `gr.Blocks` context; `demo` gets the page-load event."""
    corpus = _load_corpus()
    rng = random.Random()
    # Removed when the server process exits; gradio copies each download into its own cache first.
    download_root = tempfile.TemporaryDirectory(prefix="mrm-downloads-")

    def fresh_folder() -> Path:
        folder = Path(download_root.name) / uuid.uuid4().hex
        folder.mkdir()
        return folder

    def first_example() -> tuple[str, str, str]:
        try:
            return session.pick_example(corpus, rng)
        except InputError:
            return "", "", ""

    prompt0, summary_a0, summary_b0 = first_example()

    # ------------------------------------------------------------------ state
    labels_state = gr.State([])
    logits_state = gr.State(None)
    # BrowserState encrypts with a per-process random secret unless MRM_BROWSER_STATE_SECRET is set,
    # so without it stored labels survive page reloads but not a server restart.
    browser_labels = gr.BrowserState([], storage_key="mrm-labels", secret=os.environ.get("MRM_BROWSER_STATE_SECRET"))

    # ------------------------------------------------------------------ 1. label
    gr.Markdown("### 1. Label pairs\nWhich summary of the post do you prefer? "
                "Edit the texts or type your own; **New pair** draws one from the example corpus.")
    with gr.Row():
        with gr.Column(scale=3):
            prompt_box = gr.Textbox(value=prompt0, label="Post", lines=6, max_lines=14, elem_id="mrm-prompt")
        with gr.Column(scale=2):
            summary_a = gr.Textbox(value=summary_a0, label="Summary A", lines=3, elem_id="mrm-summary-a")
            summary_b = gr.Textbox(value=summary_b0, label="Summary B", lines=3, elem_id="mrm-summary-b")
    with gr.Row(elem_classes="mrm-choice-row"):
        a_button = gr.Button("A is better", variant="primary", elem_id="mrm-label-a")
        b_button = gr.Button("B is better", variant="primary", elem_id="mrm-label-b")
        skip_button = gr.Button("Skip", elem_id="mrm-label-skip")
        new_pair_button = gr.Button("New pair", elem_id="mrm-new-pair")
    gr.Markdown("Keys: <kbd>A</kbd> A is better, <kbd>B</kbd> B is better, <kbd>S</kbd> skip "
                "(when no text field has focus).", elem_classes="mrm-keys")
    label_status = gr.Markdown("No labelled pairs yet.", elem_classes="mrm-status", elem_id="mrm-label-status")
    choice_box = gr.Textbox(value="A", visible=False)  # the choice input of the `label` API endpoint
    label_api_button = gr.Button(visible=False)

    with gr.Accordion("Labelled pairs", open=True):
        table = gr.Dataframe(value=session.labels_to_frame([]), headers=session.LABEL_COLUMNS,
                             column_count=3, interactive=True, wrap=True, max_height=320,
                             column_widths=["46%", "27%", "27%"],
                             show_row_numbers=True, label="Labelled pairs (edit a cell; clear a summary to delete)",
                             elem_id="mrm-labels-table")
        with gr.Row():
            row_number = gr.Number(value=1, precision=0, minimum=1, label="Row", scale=1, elem_id="mrm-row-number")
            delete_button = gr.Button("Delete row", scale=1, elem_id="mrm-delete-row")
            clear_button = gr.Button("Clear all", variant="stop", scale=1)
        with gr.Row():
            upload = gr.File(label="Upload labelled pairs (CSV or JSONL with prompt, chosen, rejected)",
                             file_types=[".csv", ".jsonl", ".json", ".tsv", ".txt"], type="filepath", height=140,
                             elem_id="mrm-upload")
            download_button = gr.Button("Download labels (CSV)", elem_id="mrm-download")
            download_file = gr.File(label="Labels CSV", interactive=False, height=140, elem_id="mrm-download-file")

    # ------------------------------------------------------------------ 2. adapt
    gr.Markdown("### 2. Adapt\nFits the K mixture logits to your labels with Adam; "
                "every other parameter stays fixed.")
    with gr.Row():
        steps_box = gr.Slider(1, session.MAX_STEPS, value=session.DEFAULT_STEPS, step=1,
                              label="Adam steps", elem_id="mrm-steps")
        lr_box = gr.Number(value=session.DEFAULT_LR, label="Learning rate", minimum=0, elem_id="mrm-lr")
        published_button = gr.Button("Published setting (1 step, lr 5e-3)", elem_id="mrm-published")
    adapt_button = gr.Button("Adapt", variant="primary", elem_id="mrm-adapt")
    adapt_status = gr.Markdown("Not adapted yet.", elem_classes="mrm-status", elem_id="mrm-adapt-status")
    with gr.Row():
        weights_plot = gr.BarPlot(x="base reward", y="weight", color="stage", y_lim=[0, 1],
                                  sort=session.weight_bar_labels(runtime.num_bases), x_label_angle=-35,
                                  label="Mixture weights before and after", elem_id="mrm-weights-plot")
        curve_plot = gr.LinePlot(x="step", y="value", color="metric",
                                 label="Support loss and accuracy per Adam step", elem_id="mrm-curve-plot")

    # ------------------------------------------------------------------ 3. score
    gr.Markdown("### 3. Score\nRank candidate summaries for a post with the meta-init and your personalised reward.")
    with gr.Row():
        score_prompt = gr.Textbox(label="Post", lines=5, max_lines=12, elem_id="mrm-score-prompt")
        candidates_box = gr.Textbox(label="Candidate summaries (one per line, or blocks separated by a --- line)",
                                    lines=5, max_lines=12, elem_id="mrm-candidates")
    with gr.Row():
        pick_button = gr.Button("Pick a post from the corpus", elem_id="mrm-pick")
        score_button = gr.Button("Score", variant="primary", elem_id="mrm-score")
    score_status = gr.Markdown("", elem_classes="mrm-status", elem_id="mrm-score-status")
    score_table = gr.Dataframe(headers=session.SCORE_COLUMNS, column_count=len(session.SCORE_COLUMNS),
                               interactive=False, wrap=True, label="Ranking (personalised)",
                               column_widths=["7%", "45%", "12%", "12%", "10%", "14%"], elem_id="mrm-score-table")
    flipped_box = gr.Markdown("", elem_id="mrm-flipped")

    with gr.Accordion("Personal profile (K mixture logits)", open=False, elem_id="mrm-profile"):
        with gr.Row():
            export_button = gr.Button("Export profile (JSON)", elem_id="mrm-export")
            profile_file = gr.File(label="Profile JSON", interactive=False, elem_id="mrm-profile-file")
            profile_upload = gr.File(label="Import a profile", file_types=[".json"], type="filepath",
                                     elem_id="mrm-profile-upload")
        profile_status = gr.Markdown("", elem_classes="mrm-status", elem_id="mrm-profile-status")

    # ------------------------------------------------------------------ events: labels
    label_outputs = [labels_state, browser_labels, table, label_status, prompt_box, summary_a, summary_b]

    def on_label(choice, prompt, text_a, text_b, labels):
        try:
            new_labels, message = session.add_label(labels, prompt, text_a, text_b, choice)
        except InputError as error:
            return gr.skip(), gr.skip(), gr.skip(), _warn(error), gr.skip(), gr.skip(), gr.skip()
        next_prompt, next_a, next_b = first_example() if corpus else (prompt, "", "")
        return (new_labels, new_labels, session.labels_to_frame(new_labels), message,
                next_prompt, next_a, next_b)

    for button, choice in ((a_button, "A"), (b_button, "B"), (skip_button, "skip")):
        button.click(functools.partial(on_label, choice), [prompt_box, summary_a, summary_b, labels_state],
                     label_outputs, api_visibility="private")
    label_api_button.click(on_label, [choice_box, prompt_box, summary_a, summary_b, labels_state],
                           label_outputs, api_name="label")

    def on_new_pair():
        try:
            return (*session.pick_example(corpus, rng), gr.skip())
        except InputError as error:
            return gr.skip(), gr.skip(), gr.skip(), _warn(error)

    new_pair_button.click(on_new_pair, None, [prompt_box, summary_a, summary_b, label_status],
                          api_visibility="private")

    table_outputs = [labels_state, browser_labels, table, label_status]

    def on_table_edit(rows, labels):
        try:
            new_labels, message = session.rows_to_labels(rows)
        except InputError as error:
            return gr.skip(), gr.skip(), session.labels_to_frame(labels), _warn(error)
        return new_labels, new_labels, session.labels_to_frame(new_labels), message

    table.input(on_table_edit, [table, labels_state], table_outputs, api_visibility="private")

    def on_delete(number, labels):
        try:
            new_labels, message = session.delete_row(labels, number)
        except InputError as error:
            return gr.skip(), gr.skip(), gr.skip(), _warn(error)
        return new_labels, new_labels, session.labels_to_frame(new_labels), message

    delete_button.click(on_delete, [row_number, labels_state], table_outputs, api_visibility="private")
    clear_button.click(lambda: ([], [], session.labels_to_frame([]), "Cleared all labelled pairs."), None,
                       table_outputs, api_visibility="private")

    def on_upload(path, labels):
        # The upload box is emptied afterwards, so the same file can be uploaded again.
        try:
            new_labels, message = session.import_pairs(labels, path)
        except InputError as error:
            return gr.skip(), gr.skip(), gr.skip(), _warn(error), None
        return new_labels, new_labels, session.labels_to_frame(new_labels), message, None

    upload.upload(on_upload, [upload, labels_state], [*table_outputs, upload], api_visibility="private")

    def on_download(labels):
        try:
            return str(session.export_labels_csv(labels, fresh_folder())), gr.skip()
        except InputError as error:
            return gr.skip(), _warn(error)

    download_button.click(on_download, [labels_state], [download_file, label_status], api_visibility="private")

    def on_restore(stored):
        labels = session.restore_labels(stored)
        message = f"Restored {len(labels)} labelled pairs from this browser." if labels else "No labelled pairs yet."
        return labels, session.labels_to_frame(labels), message

    demo.load(on_restore, [browser_labels], [labels_state, table, label_status], api_visibility="private")

    # ------------------------------------------------------------------ events: adapt
    published_button.click(lambda: (session.PUBLISHED_STEPS, session.PUBLISHED_LR), None, [steps_box, lr_box],
                           api_visibility="private")

    def on_adapt(labels, steps, lr, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (gradio injects it)
        try:
            outcome = session.adapt_profile(runtime, labels, steps, lr)
        except InputError as error:
            return gr.skip(), gr.skip(), gr.skip(), _warn(error)
        progress(1.0)
        weights = session.weights_frame(outcome.weights_before, outcome.weights_after)
        curves = session.curve_frame(outcome.support_loss, outcome.support_accuracy)
        summary = (f"{outcome.message}\n\nMixture weights: "
                   f"{_format_weights(outcome.weights_before)} → {_format_weights(outcome.weights_after)}. "
                   f"Support accuracy {outcome.support_accuracy[0]:.0%} → {outcome.support_accuracy[-1]:.0%}.")
        return outcome.logits, weights, curves, summary

    adapt_button.click(on_adapt, [labels_state, steps_box, lr_box],
                       [logits_state, weights_plot, curve_plot, adapt_status], api_name="adapt")

    # ------------------------------------------------------------------ events: score
    def on_pick():
        try:
            return session.pick_candidates(corpus, rng)
        except InputError as error:
            _warn(error)
            return gr.skip(), gr.skip()

    pick_button.click(on_pick, None, [score_prompt, candidates_box], api_visibility="private")

    def on_score(logits, prompt, candidates):
        try:
            outcome = session.score_candidates(runtime, logits, prompt, candidates)
        except InputError as error:
            return gr.skip(), gr.skip(), _warn(error)
        flipped = ("**Flipped by personalisation:**\n" + "\n".join(f"- {line}" for line in outcome.flipped)
                   if outcome.flipped else "")
        return outcome.rows, flipped, outcome.message

    score_button.click(on_score, [logits_state, score_prompt, candidates_box],
                       [score_table, flipped_box, score_status], api_name="score")

    # ------------------------------------------------------------------ events: profile
    def on_export(logits):
        try:
            return str(session.write_profile(runtime, logits, fresh_folder())), "Profile written."
        except InputError as error:
            return gr.skip(), _warn(error)

    export_button.click(on_export, [logits_state], [profile_file, profile_status], api_visibility="private")

    def on_import(path):
        try:
            logits, message = session.read_profile(runtime, path)
        except InputError as error:
            return gr.skip(), _warn(error)
        weights = _format_weights(session.mixture_weights(logits))
        return logits, f"{message} Mixture weights: {weights}. Score uses it now."

    profile_upload.upload(on_import, [profile_upload], [logits_state, profile_status], api_visibility="private")


def _format_weights(weights: list[float]) -> str:
    return "[" + ", ".join(f"{w:.3f}" for w in weights) + "]"
