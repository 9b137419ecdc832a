"""Data sources, presets and result tables for training runs, as the app's training tab offers them.

Plain functions without gradio: where the embedding files come from (the demo
bundle, a Hub dataset repo, a folder), the named settings that fill the form,
and how a finished run's results are laid out next to the published figures.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from mrm.jobs import JobInputError


def demo_data_files() -> tuple[Path, Path]:
    """Return the paths of the demo bundle's embedding pair (they may not exist yet)."""
    from mrm.demo import DEMO_DIR, PREFS_NAME

    return DEMO_DIR / f"{PREFS_NAME}.pt", DEMO_DIR / f"{PREFS_NAME}.json"


def download_hub_dataset(
    repo_id: str, revision: str | None = None, token: str | None = None, cache_dir: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """Download the `.pt` / `.json` embedding pair of a Hub dataset repo and return their local paths.

    With `HF_HUB_OFFLINE=1` only the local Hub cache is used. The repo must
    hold exactly one `.pt` file and one `.json` file next to it with the same
    name, or exactly one of each anywhere.

    Raises:
        JobInputError: the id is invalid, the download failed, or the repo contains no usable pair.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )

    try:
        from httpx2 import TransportError  # the HTTP client of huggingface_hub 2.x
    except ImportError:
        TransportError = ConnectionError

    repo_id = (repo_id or "").strip()
    if not repo_id:
        raise JobInputError("no Hub dataset repo id given: enter one such as my-org/reddit-embeddings")
    try:
        folder = snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision or None,
            token=token,
            cache_dir=cache_dir,
            allow_patterns=["*.pt", "*.json"],
        )
    except HFValidationError as error:
        raise JobInputError(f"invalid Hub dataset repo id {repo_id!r}: {error}") from error
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, TransportError) as error:
        raise JobInputError(
            f"could not download the dataset {repo_id} from the Hugging Face Hub: the Hub is not reachable "
            "(offline mode or no network) and the dataset is not in the local Hub cache. "
            "Download the .pt and .json files on a machine with network access and give their paths instead."
        ) from error
    except (HfHubHTTPError, OSError) as error:
        raise JobInputError(f"could not download the dataset {repo_id} from the Hugging Face Hub: {error}") from error

    return pick_embedding_pair(Path(folder), f"the dataset {repo_id}")


def pick_embedding_pair(folder: Path, where: str) -> tuple[Path, Path]:
    """Return the `.pt` file of `folder` (searched recursively) and its `.json` metadata file."""
    pt_files = sorted(p for p in folder.rglob("*.pt") if p.is_file())
    json_files = sorted(p for p in folder.rglob("*.json") if p.is_file())
    if len(pt_files) != 1:
        found = ", ".join(str(p.relative_to(folder)) for p in pt_files) or "none"
        raise JobInputError(f"{where} must hold exactly one .pt embedding file (found: {found})")

    embed_pt = pt_files[0]
    meta_json = embed_pt.with_suffix(".json")
    if meta_json.is_file():
        return embed_pt, meta_json
    if len(json_files) == 1:
        return embed_pt, json_files[0]
    found = ", ".join(str(p.relative_to(folder)) for p in json_files) or "none"
    raise JobInputError(
        f"{where} has no {meta_json.name} next to {embed_pt.name} and not exactly one .json file (found: {found})"
    )


# Epochs of the "demo" preset, a fifth of the demo build's, so a run on the
# demo bundle's data (80 users, 45 pairs each, 771-wide embeddings) takes
# seconds on 2 CPU cores.
DEMO_PRESET_EPOCHS = 40


def demo_preset() -> dict[str, Any]:
    """Return the settings that built the demo bundle's checkpoint, with fewer epochs.

    They are this project's settings for its simulated annotators, not a published setting.
    """
    from mrm.demo_build import BuildConfig

    build = BuildConfig()
    return {
        "dataset": "REDDIT",
        "seen_train_limit": -1,
        "unseen_train_limit": -1,
        "hidden_layers": [build.num_bases],
        "use_bias": False,
        "inner_lr": build.inner_lr,
        "meta_lr": build.meta_lr,
        "train_inner_epochs": build.train_inner_epochs,
        "eval_inner_epochs": build.eval_inner_epochs,
        "tasks_per_batch": build.tasks_per_batch,
        "epochs": DEMO_PRESET_EPOCHS,
        "val_ratio": build.val_ratio,
        "seed": build.seed,
        "log_freq": 5,
        "save_freq": 0,
        "select_on": "val",
    }


def training_presets() -> dict[str, dict[str, Any]]:
    """Return the named hyperparameter presets: the published ones and "demo"."""
    from mrm.meta_train import PRESETS

    return {**{name: dict(values) for name, values in PRESETS.items()}, "demo": demo_preset()}


# User-level accuracy (%) that the MRM authors report for MRM. The other cells
# of their tables are not known here and show as n/a.
PUBLISHED_RESULTS: dict[str, dict[str, float]] = {
    "prism": {"seen": 65.3, "unseen": 65.2, "overall": 65.3},
    "reddit100": {"seen": 69.6},
    "reddit150": {},
}
PUBLISHED_LABELS = {
    "prism": "PRISM",
    "reddit100": "Reddit TL;DR, 100 training pairs per seen user",
    "reddit150": "Reddit TL;DR, 150 training pairs per seen user",
}
RESULT_COLUMNS = ("seen", "unseen", "overall", "worst10")


def published_setting(config: Mapping | None) -> str | None:
    """Return the published setting ("prism", "reddit100", "reddit150") that a run's config.json matches, or None."""
    if not config:
        return None
    dataset = str(config.get("dataset", "")).upper()
    if dataset == "PRISM":
        return "prism"
    if dataset == "REDDIT":
        return {100: "reddit100", 150: "reddit150"}.get(config.get("seen_train_limit"))
    return None


def results_table(results: Mapping | None, setting: str | None = None) -> pd.DataFrame:
    """Return the benchmark table of a finished run, in percent.

    Rows: the adapted model, the meta-initialisation without adaptation and,
    when `setting` names a published setting, the published MRM figures
    (missing cells as "n/a"). Columns: seen, unseen, overall, worst 10%.
    """
    header = ["model", "seen", "unseen", "overall", "worst 10%"]
    rows = []
    if results:
        rows.append(["MRM, this run (adapted)", *(_percent(results.get(key)) for key in RESULT_COLUMNS)])
        init = results.get("init")
        if isinstance(init, Mapping):
            rows.append(["meta-initialisation (no adaptation)", *(_percent(init.get(key)) for key in RESULT_COLUMNS)])
    if setting in PUBLISHED_RESULTS:
        published = PUBLISHED_RESULTS[setting]
        cells = [f"{published[key]:.1f}" if key in published else "n/a" for key in RESULT_COLUMNS]
        rows.append([f"MRM, published ({PUBLISHED_LABELS[setting]})", *cells])
    return pd.DataFrame(rows, columns=header)


def _percent(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{100 * value:.1f}"
    return "n/a"


def zip_checkpoint(best_dir: Path, out_dir: str | os.PathLike) -> Path:
    """Write `best_dir` into `out_dir/<run id>-best.zip` and return the zip's path."""

    best_dir = Path(best_dir)
    base = Path(out_dir) / f"{best_dir.parent.name}-best"
    return Path(shutil.make_archive(str(base), "zip", root_dir=best_dir))


def preset_settings(name: str) -> dict[str, Any]:
    """Return every `TrainConfig` setting except paths, with preset `name` laid over the defaults."""
    import dataclasses

    from mrm.meta_train import TrainConfig

    presets = training_presets()
    if name not in presets:
        raise JobInputError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    defaults = {
        spec.name: getattr(TrainConfig(), spec.name)
        for spec in dataclasses.fields(TrainConfig)
        if spec.name not in ("embed_pt", "meta_json", "ckpt", "output_path")
    }
    return {**defaults, **presets[name]}


def check_train_settings(flags: Mapping[str, Any]) -> None:
    """Raise JobInputError when `TrainConfig` rejects the settings, before any process starts."""
    from mrm.meta_train import TrainConfig

    try:
        TrainConfig(**{"embed_pt": "-", "meta_json": "-", **flags}).validate()
    except (TypeError, ValueError) as error:
        raise JobInputError(str(error)) from error
