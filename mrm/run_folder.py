"""The folder of one training run: its files, and the checks before a run writes there.

A run writes `config.json`, `train.log`, `progress.json`, `metrics.jsonl`,
`results.json`, `per_user.csv`, `best/` and `checkpoints/epoch_NNNN/`, each
file atomically. `--overwrite` removes only those files, so anything else a
user keeps in the folder stays.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mrm.evaluate import nonfinite_to_none
from mrm.fileio import write_json_atomic, write_text_atomic
from mrm.model import CONFIG_NAME, MRM, WEIGHTS_NAME, save_mrm

if TYPE_CHECKING:
    from mrm.meta_train import TrainConfig

logger = logging.getLogger(__name__)


# Files and checkpoint folders a training run writes; `--overwrite` removes only these.
RUN_FILES = ("progress.json", "metrics.jsonl", "results.json", "per_user.csv", "config.json", "train.log")
CHECKPOINT_FILES = (WEIGHTS_NAME, CONFIG_NAME)
EPOCH_FOLDER = re.compile(r"epoch_\d{4,}")
# A run that ended with one of these statuses before it wrote any result left only config.json,
# progress.json and train.log behind. Its folder can take a new run without --overwrite.
FAILED_STATUSES = ("failed", "cancelled")


def check_folder_path(path: str | Path, flag: str = "--output_path") -> Path:
    """Return `path` as a Path, or raise ValueError when it or a parent folder is an existing file."""
    folder = Path(path)
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise ValueError(f"{flag} {folder}: {candidate} is a file; give the path of a folder (it is created if missing)")
            break
    return folder


def _checkpoint_folders(folder: Path) -> list[Path]:
    """Return the checkpoint folders a run writes that exist: best/ and checkpoints/epoch_NNNN/."""
    found = [folder / "best"] if (folder / "best").is_dir() else []
    if (folder / "checkpoints").is_dir():
        found += sorted(p for p in (folder / "checkpoints").iterdir() if p.is_dir() and EPOCH_FOLDER.fullmatch(p.name))
    return found


def _run_outputs(folder: Path) -> list[str]:
    """Return the names of the results and checkpoints of an earlier run in `folder`."""
    found = [name for name in ("metrics.jsonl", "results.json", "per_user.csv") if (folder / name).exists()]
    for checkpoint in _checkpoint_folders(folder):
        if any((checkpoint / name).exists() for name in CHECKPOINT_FILES):
            found.append(f"{checkpoint.relative_to(folder)}/")
    return found


def _progress_status(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / "progress.json").read_text(encoding="utf-8")).get("status"))
    except (OSError, ValueError, AttributeError):
        return None


def check_output_path(config: TrainConfig) -> None:
    """Raise ValueError when `config.output_path` cannot take a new run; write nothing.

    The folder is rejected when it is a file, or when it contains the files of
    an earlier run and `overwrite` is off. The leftovers of a run that failed or
    was cancelled before it wrote any result do not count as an earlier run.
    """
    if not config.output_path:
        return
    folder = check_folder_path(config.output_path)
    if config.overwrite or not folder.is_dir():
        return
    found = _run_outputs(folder)
    status = _progress_status(folder)
    if (folder / "progress.json").exists() and status not in FAILED_STATUSES:
        found.insert(0, f"progress.json with status {status}")
    elif not (folder / "progress.json").exists() and (folder / "config.json").exists():
        found.append("config.json")
    if found:
        raise ValueError(
            f"--output_path {folder} already contains a training run ({', '.join(found)}); "
            "choose a new folder, or pass --overwrite to replace that run's files"
        )


def clear_run_files(folder: str | Path) -> None:
    """Remove the files and checkpoints a training run writes from `folder`; every other file stays.

    Only `model.safetensors` and `config.json` are removed from `best/` and
    `checkpoints/epoch_NNNN/`, and those folders only when nothing else is left in them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    removed = [name for name in RUN_FILES if (folder / name).exists()]
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    for checkpoint in _checkpoint_folders(folder):
        for name in CHECKPOINT_FILES:
            if (checkpoint / name).exists():
                removed.append(f"{checkpoint.relative_to(folder)}/{name}")
            (checkpoint / name).unlink(missing_ok=True)
        _remove_if_empty(checkpoint)
    _remove_if_empty(folder / "checkpoints")
    if removed:
        logger.info("removed the files of an earlier run from %s: %s", folder, ", ".join(removed))


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


class RunFolder:
    """The files of one training run; every write is atomic, so readers can poll them."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.last_epoch = 0
        if self.path:
            self.path.mkdir(parents=True, exist_ok=True)

    def write_json(self, name: str, obj) -> None:
        # NaN and infinity become null: strict JSON readers reject the bare tokens json.dumps writes.
        if self.path:
            write_json_atomic(self.path / name, nonfinite_to_none(obj))

    def write_metrics(self, history: list[dict]) -> None:
        # Rewritten whole (a few rows) so a reader never sees a half-written line.
        if self.path:
            write_text_atomic(self.path / "metrics.jsonl", "".join(json.dumps(nonfinite_to_none(row)) + "\n" for row in history))

    def progress(self, status: str, epoch: int | None, epochs: int, message: str = "") -> None:
        """Record the run state; `epoch=None` keeps the last finished epoch (for cancelled or failed runs)."""
        if epoch is None:
            epoch = self.last_epoch
        self.last_epoch = epoch
        self.write_json("progress.json", {"status": status, "epoch": epoch, "epochs": epochs, "message": message, "time": time.time()})

    def save_model(self, model: MRM, name: str, extra: dict) -> None:
        if self.path:
            save_mrm(model, self.path / name, extra_config=extra)
