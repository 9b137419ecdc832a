"""The Personalize tab: label pairs, adapt the mixture logits, score new candidates.

Components and event wiring only; the logic lives in `mrm.session`. Per-session
state is the labels and the adapted mixture logits (`gr.State`, K floats).
Both are mirrored into `gr.BrowserState`, the logits as a profile dict, so that
a page reload or an app restart with the same secret restores them.
"""

from __future__ import annotations

import functools
import logging
import random
import tempfile
import time
import uuid
from pathlib import Path

import gradio as gr

from mrm import session
from mrm.runtime import DEMO_ENCODER
from mrm.session import InputError

logger = logging.getLogger(__name__)

LABELS_STORAGE_KEY = "mrm-labels"
PROFILE_STORAGE_KEY = "mrm-profile"

# Keyboard shortcuts for labelling: A, B and S click the buttons when no text field has focus.
# The drop handlers stop files dropped on the labels table. Its built-in CSV import would skip the
# checks of the upload box, and gradio 6.31's Dataframe has no option to turn that import off.
# NOTE: not covered by a test, because a synthetic drop event in headless Chromium did not start the
# import even without these handlers. `session.rows_to_labels` rejects foreign columns either way.
SHORTCUTS_JS = """
() => {
  const stopTableDrop = (event) => {
    const target = event.target;
    if (target && target.closest && target.closest("#mrm-labels-table")) {
      event.preventDefault();
      event.stopPropagation();
      if (event.dataTransfer) event.dataTransfer.dropEffect = "none";
    }
  };
  for (const name of ["dragenter", "dragover", "drop"]) document.addEventListener(name, stopTableDrop, true);
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


# Runs in the browser before the restore handler and adds whether local storage contains labels and a
# profile at all. BrowserState passes None both for "nothing stored" and for "stored but undecryptable".
RESTORE_JS = f"""
(labels, profile, labelsPresent, profilePresent) => [
  labels, profile,
  window.localStorage.getItem("{LABELS_STORAGE_KEY}") !== null,
  window.localStorage.getItem("{PROFILE_STORAGE_KEY}") !== null,
]
"""

UNREADABLE_NOTICE = ("**Note:** this browser holds stored {what} that could not be read, probably because the app's "
                     "browser-state secret changed (see `python app.py --help`).")


def _warn(error: Exception) -> str:
    gr.Warning(str(error))
    return f"**Warning:** {error}"


def build_personalize_tab(runtime, demo: gr.Blocks, browser_secret: str | None = None) -> None:
    """Build the Personalize tab inside the current `gr.Blocks` context; `demo` gets the page-load event.

    `browser_secret` encrypts the labels and profile stored in the browser;
    None lets gradio pick a random key per process.
    """
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
    cleared_state = gr.State([])  # the labels of the last "Clear all", for "Undo clear"
    clear_armed_state = gr.State(None)  # time of the first "Clear all" click that awaits confirmation
    # Default None (not []) so that a stored empty list differs from nothing readable.
    browser_labels = gr.BrowserState(None, storage_key=LABELS_STORAGE_KEY, secret=browser_secret)
    browser_profile = gr.BrowserState(None, storage_key=PROFILE_STORAGE_KEY, secret=browser_secret)
    labels_present = gr.Checkbox(False, visible=False)
    profile_present = gr.Checkbox(False, visible=False)

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
            clear_button = gr.Button("Clear all", variant="stop", scale=1, elem_id="mrm-clear")
            undo_clear_button = gr.Button("Undo clear", scale=1, elem_id="mrm-undo-clear")
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
    score_intro = "### 3. Score\nRank candidate summaries for a post with the meta-init and your personalised reward."
    if getattr(getattr(runtime, "mode", None), "encoder", None) == DEMO_ENCODER:
        score_intro += " The demo encoder has no reward head, so the reward model score column shows n/a."
    gr.Markdown(score_intro)
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
    def on_clear(labels, armed_at, cleared):
        new_labels, armed_at, message = session.clear_labels(labels, armed_at, time.monotonic())
        button = gr.Button(value="Confirm: clear all" if armed_at is not None else "Clear all")
        if new_labels or not labels:
            return gr.skip(), gr.skip(), gr.skip(), message, armed_at, cleared, button
        return new_labels, new_labels, session.labels_to_frame(new_labels), message, None, list(labels), button

    clear_button.click(on_clear, [labels_state, clear_armed_state, cleared_state],
                       [*table_outputs, clear_armed_state, cleared_state, clear_button], api_visibility="private")

    def on_undo_clear(labels, cleared):
        try:
            new_labels, message = session.undo_clear(labels, cleared)
        except InputError as error:
            return gr.skip(), gr.skip(), gr.skip(), _warn(error), gr.skip()
        return new_labels, new_labels, session.labels_to_frame(new_labels), message, []

    undo_clear_button.click(on_undo_clear, [labels_state, cleared_state], [*table_outputs, cleared_state],
                            api_visibility="private")

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

    def on_restore(stored_labels, stored_profile, has_labels, has_profile):
        labels = session.restore_labels(stored_labels)
        if labels:
            label_message = f"Restored {session.plural(len(labels), 'labelled pair')} from this browser."
        elif stored_labels is None and has_labels:
            label_message = UNREADABLE_NOTICE.format(what="labels")
        else:
            label_message = "No labelled pairs yet."

        logits = session.restore_profile(runtime, stored_profile)
        if logits is not None:
            weights = session.mixture_weights(logits)
            adapt_message = (f"Restored the adapted profile from this browser. Mixture weights: "
                             f"{_format_weights(weights)}. Score uses it now.")
            weights_plot_value = session.weights_frame(session.mixture_weights(runtime.init_logits()), weights)
        elif stored_profile is None and has_profile:
            adapt_message, weights_plot_value = UNREADABLE_NOTICE.format(what="profile") + " Not adapted yet.", None
        else:
            adapt_message, weights_plot_value = "Not adapted yet.", None
        return labels, session.labels_to_frame(labels), label_message, logits, adapt_message, weights_plot_value

    demo.load(on_restore, [browser_labels, browser_profile, labels_present, profile_present],
              [labels_state, table, label_status, logits_state, adapt_status, weights_plot],
              js=RESTORE_JS, api_visibility="private")

    # ------------------------------------------------------------------ events: adapt
    published_button.click(lambda: (session.PUBLISHED_STEPS, session.PUBLISHED_LR), None, [steps_box, lr_box],
                           api_visibility="private")

    def on_adapt(labels, steps, lr, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (gradio injects it)
        try:
            outcome = session.adapt_profile(runtime, labels, steps, lr)
        except InputError as error:
            # Cleared plots keep the last run's curves from passing for this rejected one.
            note = " The plots were cleared; the profile adapted before, if any, is still in use."
            return gr.skip(), gr.skip(), None, None, _warn(error) + note
        progress(1.0)
        weights = session.weights_frame(outcome.weights_before, outcome.weights_after)
        curves = session.curve_frame(outcome.support_loss, outcome.support_accuracy)
        summary = (f"{outcome.message}\n\nMixture weights: "
                   f"{_format_weights(outcome.weights_before)} → {_format_weights(outcome.weights_after)}. "
                   f"Support accuracy {outcome.support_accuracy[0]:.0%} → {outcome.support_accuracy[-1]:.0%}.")
        return outcome.logits, session.profile_dict(runtime, outcome.logits), weights, curves, summary

    adapt_button.click(on_adapt, [labels_state, steps_box, lr_box],
                       [logits_state, browser_profile, weights_plot, curve_plot, adapt_status], api_name="adapt")

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
            # The previous ranking is removed so that it cannot pass for the rejected input's.
            return None, "", _warn(error)
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
        # The upload box is emptied afterwards, so the same file can be imported again.
        try:
            logits, message = session.read_profile(runtime, path)
        except InputError as error:
            return gr.skip(), gr.skip(), _warn(error), gr.skip(), gr.skip(), gr.skip(), None
        weights = session.mixture_weights(logits)
        adapt_message = (f"Using the profile imported from {Path(path).name}, not an adaptation in this page. "
                         f"Mixture weights: {_format_weights(weights)}.")
        weights_plot_value = session.weights_frame(session.mixture_weights(runtime.init_logits()), weights)
        return (logits, session.profile_dict(runtime, logits),
                f"{message} Mixture weights: {_format_weights(weights)}. Score uses it now.",
                adapt_message, weights_plot_value, None, None)

    profile_upload.upload(on_import, [profile_upload],
                          [logits_state, browser_profile, profile_status, adapt_status, weights_plot, curve_plot,
                           profile_upload],
                          api_visibility="private")


def _format_weights(weights: list[float]) -> str:
    return "[" + ", ".join(f"{w:.3f}" for w in weights) + "]"
