"""`python -m mrm push`: upload a trained checkpoint with a model card, or write the card only.

The card is built from what the checkpoint and its run folder record: the
architecture, the training settings in the checkpoint's `config.json`, and the
run's `results.json` when the checkpoint is a run's `best/` folder (or the run
folder itself). The encoder id is taken from `--encoder`, or from the
`encoder_id` a checkpoint records (demo bundles and pushed checkpoints do).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mrm push",
        description="Upload a trained MRM checkpoint to the Hugging Face Hub with a model card, "
        "or write the card to a file with --card_only (no network).",
    )
    parser.add_argument("checkpoint", help="a training run folder (its best/ checkpoint is pushed), "
                                           "a checkpoint folder such as RUN/best, or a .safetensors/.pt file")
    parser.add_argument("--repo_id", required=True, help="target Hub repo, org/name; created when missing")
    parser.add_argument("--encoder", help="id of the reward model whose embeddings the head reads (recorded in "
                                          "config.json and the card); default: the checkpoint's recorded encoder_id")
    parser.add_argument("--encoder_revision", help="revision of that encoder, if pinned")
    parser.add_argument("--dataset", help="training data, for example a Hub dataset id")
    parser.add_argument("--license", help="Hub license id of the model, for example mit")
    parser.add_argument("--revision", help="branch to push to (created when missing); default: main")
    parser.add_argument("--private", action="store_true", help="create the repo as private (only when it is new)")
    parser.add_argument("--card_only", type=Path, metavar="FILE",
                        help="write the model card (README.md) to FILE and stop: nothing is uploaded")
    return parser


def find_run_files(checkpoint: Path) -> tuple[Path, dict, dict | None]:
    """Return the checkpoint path, its recorded config and the run's results (None when there are none).

    A run folder stands for its `best/` checkpoint. `results.json` is read from
    the run folder, which is the checkpoint folder's parent for `RUN/best`.
    """
    if (checkpoint / "best").is_dir() and (checkpoint / "progress.json").is_file():
        checkpoint = checkpoint / "best"
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    config = _read_json(folder / "config.json") or {}
    run_folder = folder.parent if folder.name == "best" else folder
    results = _read_json(run_folder / "results.json") if (run_folder / "progress.json").is_file() else None
    return checkpoint, config, results


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"could not read {path} as JSON: {error}") from None
    return value if isinstance(value, dict) else None


def card_info_from(args: argparse.Namespace, config: dict, results: dict | None) -> dict:
    """Collect the model card fields from the flags and the checkpoint's recorded files."""
    info = {
        "encoder": args.encoder or config.get("encoder_id") or config.get("encoder"),
        "encoder_revision": args.encoder_revision or config.get("encoder_revision"),
        "dataset": args.dataset,
        "license": args.license,
        "training": config.get("training"),
        "results": results,
    }
    return {key: value for key, value in info.items() if value}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from mrm.hub import HubError, parse_repo_id, push_checkpoint, render_model_card
    from mrm.model import CheckpointError, load_mrm

    try:
        if "@" in args.repo_id:
            raise ValueError(f"--repo_id {args.repo_id}: give the branch with --revision, not after '@'")
        repo_id, _ = parse_repo_id(args.repo_id)
        checkpoint, config, results = find_run_files(Path(args.checkpoint).expanduser())
        model = load_mrm(checkpoint)
        card_info = card_info_from(args, config, results)
    except (HubError, CheckpointError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not card_info.get("encoder"):
        logger.warning("the checkpoint records no encoder, so the card shows 'not recorded'; "
                       "pass --encoder with the id of the reward model that made the embeddings")

    if args.card_only:
        from mrm.fileio import write_text_atomic

        try:
            card = render_model_card(model, {"repo_id": repo_id, **card_info})
            write_text_atomic(args.card_only, card)
        except (ValueError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"wrote the model card for {repo_id} to {args.card_only}; nothing was uploaded")
        return 0

    try:
        url = push_checkpoint(model, repo_id, card_info, private=args.private, revision=args.revision)
    except (HubError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"pushed {checkpoint} to {url}")
    return 0
