"""Event logic of the Personalize tab, as plain functions over plain data.

A person's state is two plain values that the UI keeps per browser session:
the labelled pairs (a list of `{"prompt", "chosen", "rejected"}` dicts) and the
adapted mixture logits (a list of K floats, or None before adapting). Every
function returns new values and never mutates its inputs, so a rejected input
leaves the labels as they were. Input problems raise `InputError`, whose
message is meant for the page. This module does not import gradio.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mrm.fileio import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

LABEL_COLUMNS = ["prompt", "chosen", "rejected"]
MAX_TEXT_CHARS = 8000
MAX_LABELS = 1000
MAX_CANDIDATES = 20
MAX_UPLOAD_BYTES = 5_000_000
MAX_STEPS = 500
MAX_LR = 10.0
# Defaults that visibly personalise from 5-10 labels. They were measured on the committed demo
# checkpoint (assets/demo): each unseen simulated annotator in assets/demo/demo_prefs.* was adapted
# on its first 5 or 10 training pairs and scored on its test pairs. Mean accuracy went from 57% at
# meta-init to 69% after 5 pairs and 76% after 10, and the largest mixture weight moved by about
# 0.6. One step at the published 5e-3 moves it by 0.002 and leaves accuracy at 57%.
DEFAULT_STEPS = 30
DEFAULT_LR = 0.1
PUBLISHED_STEPS = 1
PUBLISHED_LR = 5e-3  # the published Reddit TL;DR inner learning rate
PROFILE_FORMAT = "mrm-profile"
PROFILE_VERSION = 1
CANDIDATE_SEPARATOR = "---"
CLEAR_CONFIRM_S = 10.0  # a second "Clear all" click within this many seconds deletes the labels
NO_SCORE_NOTE = ("The reward model score column is n/a because encoder {encoder!r} has no reward head; "
                 "the rewards come from the MRM head alone.")

Labels = list[dict[str, str]]


class InputError(ValueError):
    """Invalid user input; the message states the problem and the fix."""


# ----------------------------------------------------------------------------- texts


def plural(count: int, noun: str) -> str:
    """Return "1 pair" or "3 pairs": `count` with `noun`, adding an "s" unless the count is one."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _subject(name: str) -> str:
    # Names of page fields ("Summary A") stand alone; generic ones get an article ("The post").
    return name if name[:1].isupper() else f"The {name}"


def check_text(name: str, text: Any) -> str:
    """Return `text` stripped, or raise `InputError` when it is empty or longer than MAX_TEXT_CHARS."""
    text = "" if text is None else str(text).strip()
    if not text:
        raise InputError(f"{_subject(name)} is empty. Type or pick a text first.")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(
            f"{_subject(name)} has {len(text):,} characters, more than the limit of {MAX_TEXT_CHARS:,}. Shorten it."
        )
    return text


def check_pair(prompt: Any, chosen: Any, rejected: Any) -> dict[str, str]:
    """Return a validated `{"prompt", "chosen", "rejected"}` dict or raise `InputError`."""
    pair = {
        "prompt": check_text("post", prompt),
        "chosen": check_text("chosen summary", chosen),
        "rejected": check_text("rejected summary", rejected),
    }
    if pair["chosen"] == pair["rejected"]:
        raise InputError("Both summaries are identical, so there is no preference to learn. Edit one of them.")
    return pair


def format_post(post: Any) -> str:
    """Render a corpus post as the prompt text passed to the encoder.

    Uses the post's own `.prompt` (the text the demo checkpoint was trained on)
    when it has one, else its `.title` and `.post`.
    """
    prompt = getattr(post, "prompt", None)
    if isinstance(prompt, str) and prompt.strip():
        return prompt.strip()
    title = (getattr(post, "title", "") or "").strip()
    body = (getattr(post, "post", "") or "").strip()
    return f"{title}\n\n{body}" if title else body


def pick_example(corpus: list, rng: random.Random) -> tuple[str, str, str]:
    """Pick a random post with two different candidate summaries: `(prompt, summary_a, summary_b)`."""
    posts = [post for post in corpus if len(post.summaries) >= 2]
    if not posts:
        raise InputError("The example corpus has no post with two summaries. Type a post and two summaries instead.")
    post = rng.choice(posts)
    first, second = rng.sample(range(len(post.summaries)), 2)
    return format_post(post), post.summaries[first].text, post.summaries[second].text


def pick_candidates(corpus: list, rng: random.Random) -> tuple[str, str]:
    """Pick a random post and return `(prompt, candidates)` with one summary per line."""
    posts = [post for post in corpus if post.summaries]
    if not posts:
        raise InputError("The example corpus is empty. Type a post and candidate summaries instead.")
    post = rng.choice(posts)
    lines = [" ".join(summary.text.split()) for summary in post.summaries[:MAX_CANDIDATES]]
    return format_post(post), "\n".join(lines)


# ----------------------------------------------------------------------------- labels


def add_label(labels: Labels, prompt: Any, summary_a: Any, summary_b: Any, choice: str) -> tuple[Labels, str]:
    """Record that summary `choice` ("A" or "B") is better, or skip the pair ("skip")."""
    choice = (choice or "").strip().lower()
    if choice == "skip":
        return list(labels), "Skipped this pair."
    if choice not in {"a", "b"}:
        raise InputError(f"Unknown choice {choice!r}; use 'A', 'B' or 'skip'.")
    if len(labels) >= MAX_LABELS:
        raise InputError(f"There are already {len(labels)} labelled pairs, the maximum. Delete some first.")

    # Check the fields under the names the page shows before they become chosen and rejected.
    summary_a = check_text("Summary A", summary_a)
    summary_b = check_text("Summary B", summary_b)
    chosen, rejected = (summary_a, summary_b) if choice == "a" else (summary_b, summary_a)
    pair = check_pair(prompt, chosen, rejected)
    new_labels = [*labels, pair]
    return new_labels, f"Labelled pair {len(new_labels)}: {choice.upper()} is better."


def labels_to_rows(labels: Labels) -> list[list[str]]:
    """Table rows (prompt, chosen, rejected) for the labels table."""
    return [[pair["prompt"], pair["chosen"], pair["rejected"]] for pair in labels]


def labels_to_frame(labels: Labels) -> pd.DataFrame:
    """Return the labels as a DataFrame with columns prompt, chosen, rejected."""
    return pd.DataFrame(labels_to_rows(labels), columns=LABEL_COLUMNS)


def rows_to_labels(rows: Any) -> tuple[Labels, str]:
    """Read an edited labels table back; rows whose chosen or rejected cell was cleared are deleted.

    Raises `InputError` (naming the row) when an edited row is invalid, and
    when the columns are not exactly prompt, chosen, rejected (as after a
    file dropped on the table), so the caller can keep the previous labels.
    """
    headers = None
    if isinstance(rows, pd.DataFrame):
        headers = [str(column) for column in rows.columns]
        rows = rows.astype(object).where(rows.notna(), "").values.tolist()
    elif isinstance(rows, dict):  # gradio_client sends {"headers": ..., "data": ...}
        headers = rows.get("headers")
        rows = rows.get("data") or []
    if headers is not None and [str(header).strip().lower() for header in headers] != LABEL_COLUMNS:
        raise InputError(
            f"The table has columns {list(headers)}, expected {LABEL_COLUMNS}. "
            "The change was not applied; add pairs with the upload box, which checks the file."
        )
    labels: Labels = []
    removed = 0
    for number, row in enumerate(rows or [], start=1):
        cells = [("" if cell is None else str(cell)) for cell in list(row)[:3]]
        cells += [""] * (3 - len(cells))
        if not cells[1].strip() or not cells[2].strip():
            removed += 1
            continue
        if any("\ufffd" in cell for cell in cells):
            raise InputError(
                f"Row {number} contains undecodable characters (\ufffd), as from a file that is not UTF-8. "
                "The change was not applied; upload the file with the upload box instead."
            )
        try:
            labels.append(check_pair(*cells))
        except InputError as error:
            raise InputError(f"Row {number}: {error}") from None
    message = f"{plural(len(labels), 'labelled pair')}."
    if removed:
        message += f" Removed {plural(removed, 'row')} with an empty chosen or rejected cell."
    return labels, message


def delete_row(labels: Labels, row_number: Any) -> tuple[Labels, str]:
    """Delete the labelled pair at 1-based `row_number`."""
    try:
        index = int(row_number) - 1
    except (TypeError, ValueError):
        raise InputError(f"Row number {row_number!r} is not a whole number.") from None
    if not labels:
        raise InputError("There are no labelled pairs to delete.")
    if not 0 <= index < len(labels):
        raise InputError(f"Row {index + 1} does not exist; pick a row from 1 to {len(labels)}.")
    new_labels = labels[:index] + labels[index + 1:]
    return new_labels, f"Deleted row {index + 1}; {plural(len(new_labels), 'labelled pair')} left."


def clear_labels(labels: Labels, armed_at: float | None, now: float) -> tuple[Labels, float | None, str]:
    """Clear all labels on the second request within CLEAR_CONFIRM_S seconds.

    Returns `(labels, armed_at, message)`. The first request keeps the labels
    and returns `now` as `armed_at`; a second request within the window
    returns no labels and `armed_at` None.
    """
    if not labels:
        return [], None, "There are no labelled pairs to clear."
    if armed_at is None or not 0 <= now - armed_at <= CLEAR_CONFIRM_S:
        return list(labels), now, (f"Click **Clear all** again within {CLEAR_CONFIRM_S:g} s to delete "
                                   f"{plural(len(labels), 'labelled pair')}.")
    return [], None, f"Cleared {plural(len(labels), 'labelled pair')}. **Undo clear** brings them back."


def undo_clear(labels: Labels, cleared: Labels) -> tuple[Labels, str]:
    """Put the last cleared labels back in front of the current ones, up to MAX_LABELS."""
    if not cleared:
        raise InputError("There is no cleared set of labels to bring back.")
    restored = [*cleared, *labels][:MAX_LABELS]
    return restored, f"Brought back {plural(len(cleared), 'labelled pair')}; {len(restored)} in total."


def restore_labels(stored: Any) -> Labels:
    """Return the valid pairs of a value restored from browser storage, dropping anything malformed."""
    if not isinstance(stored, list):
        return []
    labels = []
    for item in stored[:MAX_LABELS]:
        if not isinstance(item, dict):
            continue
        try:
            labels.append(check_pair(item.get("prompt"), item.get("chosen"), item.get("rejected")))
        except InputError:
            continue
    return labels


def import_pairs(labels: Labels, path: str | Path | None) -> tuple[Labels, str]:
    """Append the pairs of a CSV or JSONL upload; malformed lines are reported by number, the rest kept."""
    from mrm.pairs import read_pairs

    if not path:
        raise InputError("No file uploaded. Choose a CSV or JSONL file of labelled pairs.")
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise InputError(
            f"{path.name} is {size:,} bytes, more than the limit of {MAX_UPLOAD_BYTES:,}. Upload a smaller file."
        )
    # read_pairs decodes non-UTF-8 bytes with a fallback encoding and reports that in `warnings`.
    result = read_pairs(path.read_bytes(), name=path.name)
    added: Labels = []
    problems = list(result.errors)
    for pair in result.pairs:
        try:
            added.append(check_pair(pair.get("prompt"), pair.get("chosen"), pair.get("rejected")))
        except InputError as error:
            problems.append(f"pair {len(added) + len(problems) + 1}: {error}")
    room = MAX_LABELS - len(labels)
    if len(added) > room:
        problems.append(f"{plural(len(added) - room, 'pair')} beyond the limit of {MAX_LABELS} not added")
        added = added[:room]

    message = f"Added {plural(len(added), 'pair')} from {path.name}."
    for warning in result.warnings:
        message += f" Note: {warning.rstrip('.')}."
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        message += f" Skipped: {shown}{more}."
    return [*labels, *added], message


def export_labels_csv(labels: Labels, directory: str | Path) -> Path:
    """Write the labels as `labelled_pairs.csv` (prompt, chosen, rejected) in `directory`."""
    if not labels:
        raise InputError("There are no labelled pairs to download yet.")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(LABEL_COLUMNS)
    writer.writerows(labels_to_rows(labels))
    path = Path(directory) / "labelled_pairs.csv"
    write_text_atomic(path, buffer.getvalue())
    return path


# ----------------------------------------------------------------------------- adapt


@dataclass
class AdaptOutcome:
    """Result of adapting the mixture logits to one person's labels."""

    logits: list[float]
    weights_before: list[float]
    weights_after: list[float]
    support_loss: list[float]
    support_accuracy: list[float]
    num_pairs: int
    message: str = ""


def check_steps_and_lr(steps: Any, lr: Any) -> tuple[int, float]:
    """Return `(steps, lr)` as numbers in their allowed ranges, or raise `InputError`."""
    try:
        steps_value = int(steps)
        lr_value = float(lr)
    except (TypeError, ValueError):
        raise InputError(f"Steps {steps!r} and learning rate {lr!r} must be numbers.") from None
    if not 1 <= steps_value <= MAX_STEPS:
        raise InputError(f"Steps must be between 1 and {MAX_STEPS}, not {steps_value}.")
    if not (math.isfinite(lr_value) and 0 < lr_value <= MAX_LR):
        raise InputError(f"The learning rate must be above 0 and at most {MAX_LR}, not {lr_value}.")
    return steps_value, lr_value


def mixture_weights(logits: list[float]) -> list[float]:
    """Softmax of the mixture logits, as plain floats."""
    return torch.softmax(torch.tensor(logits, dtype=torch.float32), dim=0).tolist()


def adapt_profile(runtime, labels: Labels, steps: Any, lr: Any) -> AdaptOutcome:
    """Embed the labelled pairs and adapt the meta-learned mixture logits to them with Adam."""
    from mrm.adapt import adapt_logits

    if not labels:
        raise InputError("There are no labelled pairs yet. Label or upload at least one pair, then adapt.")
    steps, lr = check_steps_and_lr(steps, lr)
    pairs = restore_labels(labels)
    if not pairs:
        raise InputError("None of the labelled pairs is valid. Check the table for empty or identical summaries.")

    # One encoder call for all responses: chosen rows first, then rejected rows.
    prompts = [pair["prompt"] for pair in pairs]
    responses = [pair["chosen"] for pair in pairs] + [pair["rejected"] for pair in pairs]
    embeddings, _ = runtime.encode(prompts + prompts, responses)  # [2P, H]
    chosen, rejected = embeddings[: len(pairs)], embeddings[len(pairs):]

    init_logits = runtime.init_logits()
    result = adapt_logits(runtime.model, chosen, rejected, torch.tensor(init_logits), steps, lr)
    logits = [float(v) for v in result.logits.detach().cpu()]

    message = (f"Adapted on {plural(result.num_pairs, 'labelled pair')} with {plural(steps, 'Adam step')} "
               f"at learning rate {lr:g}.")
    if result.num_pairs == 1:
        message += " With a single pair the weights can only move toward that one preference."
    return AdaptOutcome(
        logits=logits,
        weights_before=mixture_weights(init_logits),
        weights_after=mixture_weights(logits),
        support_loss=[float(v) for v in result.support_loss],
        support_accuracy=[float(v) for v in result.support_accuracy],
        num_pairs=int(result.num_pairs),
        message=message,
    )


def weight_bar_labels(num_bases: int) -> list[str]:
    """Category labels of the weights bar plot, in display order: each base reward before, then after."""
    return [f"{index} {stage}" for index in range(1, num_bases + 1) for stage in ("meta-init", "personalised")]


def weights_frame(weights_before: list[float], weights_after: list[float]) -> pd.DataFrame:
    """Mixture weights before and after adapting, one row per (base reward, stage), for a bar plot."""
    labels = iter(weight_bar_labels(len(weights_before)))
    rows = []
    for before, after in zip(weights_before, weights_after):
        rows.append({"base reward": next(labels), "weight": before, "stage": "meta-init"})
        rows.append({"base reward": next(labels), "weight": after, "stage": "personalised"})
    return pd.DataFrame(rows, columns=["base reward", "weight", "stage"])


def curve_frame(support_loss: list[float], support_accuracy: list[float]) -> pd.DataFrame:
    """Support loss and accuracy per step, long format for a line plot.

    Step 0 is the meta-init value and step s the value after s Adam steps.
    """
    rows = [{"step": step, "value": value, "metric": "support loss"} for step, value in enumerate(support_loss)]
    rows += [{"step": step, "value": value, "metric": "support accuracy"}
             for step, value in enumerate(support_accuracy)]
    return pd.DataFrame(rows, columns=["step", "value", "metric"])


# ----------------------------------------------------------------------------- score


SCORE_COLUMNS = ["rank", "candidate", "personalised reward", "meta-init reward", "meta-init rank",
                 "reward model score"]


@dataclass
class ScoreOutcome:
    """Rewards of candidate responses under the meta-init and the personalised logits."""

    rows: list[list[Any]]
    flipped: list[str] = field(default_factory=list)
    message: str = ""


def parse_candidates(text: Any) -> list[str]:
    """Split candidate responses: blocks between `---` lines when present, else one per line."""
    if isinstance(text, list):
        candidates = [str(item).strip() for item in text]
    else:
        text = "" if text is None else str(text)
        lines = text.splitlines()
        if any(line.strip() == CANDIDATE_SEPARATOR for line in lines):
            blocks, current = [], []
            for line in lines:
                if line.strip() == CANDIDATE_SEPARATOR:
                    blocks.append("\n".join(current))
                    current = []
                else:
                    current.append(line)
            blocks.append("\n".join(current))
            candidates = [block.strip() for block in blocks]
        else:
            candidates = [line.strip() for line in lines]
    return [candidate for candidate in candidates if candidate]


def _ranks(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0] * len(values)
    for rank, index in enumerate(order, start=1):
        ranks[index] = rank
    return ranks


def score_candidates(runtime, logits: list[float] | None, prompt: Any, candidates_text: Any) -> ScoreOutcome:
    """Score candidates for one prompt with the meta-init and the personalised logits, and find flips."""
    prompt = check_text("post", prompt)
    candidates = parse_candidates(candidates_text)
    if not candidates:
        raise InputError("There are no candidates. Enter one candidate summary per line (or separate them with ---).")
    if len(candidates) > MAX_CANDIDATES:
        raise InputError(f"There are {len(candidates)} candidates, more than the limit of {MAX_CANDIDATES}.")
    candidates = [check_text(f"candidate {i}", text) for i, text in enumerate(candidates, start=1)]

    init_logits = runtime.init_logits()
    adapted = logits is not None
    if adapted:
        logits = check_profile_logits(logits, runtime.num_bases)
    personal_logits = logits if adapted else init_logits

    embeddings, model_scores = runtime.encode([prompt] * len(candidates), candidates)  # [N, H], [N] or None
    base = runtime.base_rewards(embeddings)  # [N, K]
    init_rewards = _mix(base, init_logits)
    personal_rewards = _mix(base, personal_logits)

    personal_ranks = _ranks(personal_rewards)
    init_ranks = _ranks(init_rewards)
    rows = []
    for i in sorted(range(len(candidates)), key=lambda i: personal_ranks[i]):
        score = "n/a" if model_scores is None else round(float(model_scores[i]), 4)
        rows.append([personal_ranks[i], f"#{i + 1} {candidates[i]}", round(personal_rewards[i], 4),
                     round(init_rewards[i], 4), init_ranks[i], score])

    # A pair is flipped when the two logit vectors order it differently.
    flipped = []
    for i in range(len(candidates)):
        for j in range(i + 1, len(candidates)):
            before = init_rewards[i] - init_rewards[j]
            after = personal_rewards[i] - personal_rewards[j]
            if before * after < 0:
                winner_before, winner_after = (i, j) if before > 0 else (j, i)
                flipped.append(f"#{winner_before + 1} vs #{winner_after + 1}: meta-init preferred "
                               f"#{winner_before + 1}, personalised prefers #{winner_after + 1}")

    message = f"Scored {plural(len(candidates), 'candidate')}."
    if not adapted:
        message += " Not adapted yet, so the personalised reward equals the meta-init reward."
    elif not flipped and len(candidates) > 1:
        message += " Personalisation changed no pairwise order."
    if model_scores is None:
        message += " " + NO_SCORE_NOTE.format(encoder=runtime.encoder_id)
    return ScoreOutcome(rows=rows, flipped=flipped, message=message)


def _mix(base_rewards: torch.Tensor, logits: list[float]) -> list[float]:
    weights = torch.softmax(torch.tensor(logits, dtype=torch.float32), dim=0)
    return (base_rewards * weights).sum(dim=-1).tolist()


# ----------------------------------------------------------------------------- profiles


def check_profile_logits(logits: Any, num_bases: int) -> list[float]:
    """Return `logits` as K finite floats, or raise `InputError`."""
    if not isinstance(logits, (list, tuple)) or not all(isinstance(v, (int, float)) for v in logits):
        raise InputError("The mixture logits must be a list of numbers.")
    if len(logits) != num_bases:
        raise InputError(f"The profile has {len(logits)} mixture logits but this checkpoint has K={num_bases}.")
    if not all(math.isfinite(float(v)) for v in logits):
        raise InputError("The profile's mixture logits contain NaN or infinity.")
    return [float(v) for v in logits]


def profile_dict(runtime, logits: list[float] | None) -> dict:
    """Build the personal profile: K mixture logits plus the encoder and checkpoint they belong to."""
    if logits is None:
        raise InputError("Nothing to export yet: adapt to your labels first.")
    return {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "encoder": runtime.encoder_id,
        "checkpoint": runtime.checkpoint_id,
        "in_dim": runtime.in_dim,
        "num_bases": runtime.num_bases,
        "mixture_logits": check_profile_logits(logits, runtime.num_bases),
    }


def write_profile(runtime, logits: list[float] | None, directory: str | Path) -> Path:
    """Write the profile as `mrm_profile.json` in `directory`."""
    path = Path(directory) / "mrm_profile.json"
    write_json_atomic(path, profile_dict(runtime, logits))
    return path


def read_profile(runtime, path: str | Path | None) -> tuple[list[float], str]:
    """Read a profile JSON file and return its logits, rejecting one made for another encoder or checkpoint."""
    if not path:
        raise InputError("No profile file uploaded.")
    path = Path(path)
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise InputError(f"{path.name} is too large to be a profile ({path.stat().st_size:,} bytes).")
    try:
        profile = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path.name} is not a UTF-8 JSON file: {error}.") from None
    logits = check_profile(runtime, profile, path.name)
    return logits, f"Loaded the profile from {path.name}."


def restore_profile(runtime, stored: Any) -> list[float] | None:
    """Return the logits of a profile restored from browser storage, or None when it is missing or does not fit."""
    if stored is None:
        return None
    try:
        return check_profile(runtime, stored, "The stored profile")
    except InputError as error:
        logger.info("stored profile not restored: %s", error)
        return None


def check_profile(runtime, profile: Any, name: str) -> list[float]:
    """Return the logits of a profile dict, rejecting one made for another encoder or checkpoint."""
    if not isinstance(profile, dict) or profile.get("format") != PROFILE_FORMAT:
        raise InputError(f"{name} is not an MRM profile (expected \"format\": \"{PROFILE_FORMAT}\").")

    expected = {"encoder": runtime.encoder_id, "checkpoint": runtime.checkpoint_id, "in_dim": runtime.in_dim}
    for key, value in expected.items():
        if profile.get(key) != value:
            raise InputError(
                f"This profile was made for {key} {profile.get(key)!r}, but the app runs {key} {value!r}. "
                "Adapt again here, or load the profile in an app that runs the same encoder and checkpoint."
            )
    return check_profile_logits(profile.get("mixture_logits"), runtime.num_bases)
