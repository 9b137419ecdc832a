"""Command line: `python -m mrm train | evaluate | embed | demo`.

`train` and `evaluate` accept the flag names of the published MRM scripts, so
a published command runs with only the program name changed. Flags are
generated from `TrainConfig`; a `--preset` fills the published settings and
explicit flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import types
import typing
from pathlib import Path

from mrm.meta_train import PRESETS, TrainConfig

logger = logging.getLogger(__name__)

USAGE = """usage: python -m mrm {train,evaluate,embed,demo} [options]

  train      meta-train MRM on an embedding file (run folder under --output_path)
  evaluate   user-level evaluation of a checkpoint (file, folder or Hub repo id)
  embed      turn Reddit TL;DR, PRISM or a pairs file into an embedding file
  demo       build the offline demo bundle (python -m mrm demo build)

Run `python -m mrm COMMAND --help` for a command's options.
"""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# Flags that only matter for training; `evaluate` accepts them (published commands may pass them) but hides them.
TRAINING_ONLY = {"meta_lr", "train_inner_epochs", "tasks_per_batch", "epochs", "warmup_ratio", "val_ratio", "rpo_ratio",
                 "rpo_gamma", "log_freq", "save_freq", "select_on", "grad_clip", "overwrite", "use_bias", "hidden_layers"}


def build_parser(command: str) -> argparse.ArgumentParser:
    """Parser whose options mirror `TrainConfig` one-to-one (defaults None: unset flags keep the preset's value)."""
    description = {
        "train": "Meta-train MRM (MAML-style with the Robust Personalization Objective).",
        "evaluate": "Evaluate a checkpoint with the user-level protocol (seen, unseen, overall, worst 10%).",
    }[command]
    parser = argparse.ArgumentParser(prog=f"python -m mrm {command}", description=description)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="published settings to start from; explicit flags override them")
    hints = typing.get_type_hints(TrainConfig)
    for spec in dataclasses.fields(TrainConfig):
        hint = hints[spec.name]
        kwargs: dict = {"default": None, "help": spec.metadata.get("help", "")}
        if command == "evaluate" and spec.name in TRAINING_ONLY:
            kwargs["help"] = argparse.SUPPRESS
        if hint in (bool, "bool"):
            kwargs.update(type=_parse_bool, nargs="?", const=True, metavar="BOOL")
        elif typing.get_origin(hint) is list:
            kwargs.update(type=int, nargs="+", metavar="N")
        else:
            base = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
            if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
                hint = base[0]
            kwargs["type"] = hint if hint in (int, float, str) else str
        parser.add_argument(f"--{spec.name}", **kwargs)
    parser.add_argument("--log_level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    return parser


# Evaluation settings a checkpoint saved by this project records, and so can supply.
CHECKPOINT_SETTINGS = ("seed", "dataset", "seen_train_limit", "unseen_train_limit", "inner_lr", "eval_inner_epochs")


def checkpoint_settings(checkpoint_path: Path) -> dict:
    """Evaluation settings recorded in the `config.json` beside a checkpoint (empty for published `.pt` files).

    `training` contains the run's settings; an `adaptation` entry (inner_lr,
    steps) names the adaptation its reported numbers used and takes precedence.
    """
    folder = checkpoint_path if checkpoint_path.is_dir() else checkpoint_path.parent
    config_path = folder / "config.json"
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    training = config.get("training") or {}
    settings = {key: training[key] for key in CHECKPOINT_SETTINGS if key in training}
    adaptation = config.get("adaptation") or {}
    if "inner_lr" in adaptation:
        settings["inner_lr"] = adaptation["inner_lr"]
    if "steps" in adaptation:
        settings["eval_inner_epochs"] = adaptation["steps"]
    return settings


def config_from_args(args: argparse.Namespace, checkpoint_defaults: dict | None = None) -> TrainConfig:
    """Merge settings: dataclass defaults < preset < checkpoint's recorded settings < explicit flags."""
    values = dict(PRESETS[args.preset]) if args.preset else {}
    values.update(checkpoint_defaults or {})
    for spec in dataclasses.fields(TrainConfig):
        given = getattr(args, spec.name)
        if given is not None:
            values[spec.name] = given
    return TrainConfig(**values)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _setup_logging(level: str, output_path: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if output_path:
        Path(output_path).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_path) / "train.log", encoding="utf-8"))
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)


def format_summary(results: dict, title: str) -> str:
    """Format the adapted and meta-initialisation accuracies as a readable table."""
    lines = [title, f"{'':14}{'adapted':>10}{'meta-init':>11}"]
    for key, label in (("seen", "seen"), ("unseen", "unseen"), ("overall", "overall"), ("worst10", "worst 10%"), ("std", "std")):
        lines.append(f"{label:14}{results[key]:>10.4f}{results['init'][key]:>11.4f}")
    lines.append(f"users: {results['num_seen']} seen, {results['num_unseen']} unseen; skipped {len(results.get('skipped_users', {}))}")
    if "selected_on" in results:
        lines.append(f"epoch {results['best_epoch']} selected on {results['selected_on']}")
    return "\n".join(lines)


def run_train(argv: list[str]) -> int:
    args = build_parser("train").parse_args(argv)
    config = config_from_args(args)

    from mrm.meta_train import prepare_output_path

    try:
        config.validate()
        prepare_output_path(config)  # before logging opens train.log
    except ValueError as error:
        _setup_logging(args.log_level, None)
        logger.error("%s", error)
        return 2
    _setup_logging(args.log_level, config.output_path)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    from mrm.meta_train import meta_train

    try:
        result = meta_train(config)
    except KeyboardInterrupt:
        logger.warning("training cancelled")
        return 130
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    print(format_summary(result.results, "Meta-training finished: user-level accuracy"))
    if result.output_path:
        print(f"run folder: {result.output_path}")
    return 0


def run_evaluate(argv: list[str]) -> int:
    args = build_parser("evaluate").parse_args(argv)
    _setup_logging(args.log_level, None)
    if not args.ckpt:
        logger.error("--ckpt is required: a checkpoint file, folder or Hub repo id such as ModalityDance/MRM-Reddit150-V2")
        return 2

    from mrm.data import DataError, build_user_splits, read_embedding_files
    from mrm.evaluate import evaluate, write_per_user_csv
    from mrm.fileio import write_json_atomic
    from mrm.hub import resolve_checkpoint
    from mrm.meta_train import resolve_device
    from mrm.model import load_mrm

    try:
        checkpoint_path = resolve_checkpoint(args.ckpt)
        recorded = checkpoint_settings(checkpoint_path)
        config = config_from_args(args, recorded)
        taken = {key: value for key, value in recorded.items() if getattr(args, key) is None}
        if taken:
            logger.info("using settings recorded with the checkpoint (pass the flags to override): %s", taken)
        device = resolve_device(config.device)
        model = load_mrm(checkpoint_path, device=str(device))
        data = read_embedding_files(config.embed_pt, config.meta_json)
        if data.hidden_size != model.in_dim:
            raise DataError(
                f"embedding width {data.hidden_size} in {config.embed_pt} does not match the checkpoint's in_dim "
                f"{model.in_dim}; embed the data with the reward model the checkpoint was trained on"
            )
        splits = build_user_splits(data, config.seed, config.dataset, config.seen_train_limit, config.unseen_train_limit, config.score_threshold)
        embeddings = data.embeddings if device.type == "cpu" else data.embeddings.to(device)
        report = evaluate(model, embeddings, splits.seen, splits.unseen, config.inner_lr, config.eval_inner_epochs)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        logger.error("%s", error)
        return 2

    results = {**report.to_results(), "checkpoint": config.ckpt, "skipped_users": splits.skipped,
               "protocol": {"inner_lr": config.inner_lr, "eval_inner_epochs": config.eval_inner_epochs, "seed": config.seed,
                            "seen_train_limit": config.seen_train_limit, "unseen_train_limit": config.unseen_train_limit}}
    print(format_summary(results, f"Evaluation of {config.ckpt}: user-level accuracy"))
    if config.output_path:
        out = Path(config.output_path)
        write_json_atomic(out / "results.json", results)
        write_per_user_csv(report.per_user, out / "per_user.csv")
        print(f"results: {out / 'results.json'}, per-user accuracies: {out / 'per_user.csv'}")
    else:
        print(json.dumps({k: results[k] for k in ("seen", "unseen", "overall", "worst10")}))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        return run_train(rest)
    if command == "evaluate":
        return run_evaluate(rest)
    if command == "embed":
        from mrm.prepare import main as embed_main

        return embed_main(rest)
    if command == "demo":
        from mrm.demo_build import main as demo_main

        return demo_main(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2
