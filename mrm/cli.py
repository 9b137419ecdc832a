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
import math
import signal
import sys
import textwrap
import types
import typing
from pathlib import Path

from mrm.meta_train import PRESETS, TrainConfig

logger = logging.getLogger(__name__)

USAGE = """usage: python -m mrm {train,evaluate,embed,push,demo} [options]

  train      meta-train MRM on an embedding file (run folder under --output_path)
  evaluate   user-level evaluation of a checkpoint (file, folder or Hub repo id)
  embed      turn Reddit TL;DR, PRISM or a pairs file into an embedding file
  push       upload a trained checkpoint with a model card to the Hub (or write the card only)
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
                 "rpo_gamma", "log_freq", "save_freq", "select_on", "grad_clip", "use_bias", "hidden_layers"}

# Evaluation settings a checkpoint saved by this project records, and so can supply.
CHECKPOINT_SETTINGS = ("seed", "dataset", "seen_train_limit", "unseen_train_limit", "inner_lr", "eval_inner_epochs")

# `evaluate` reads and writes less than `train`, so some flags get their own help there.
EVALUATE_HELP = {
    "ckpt": "checkpoint to evaluate: a .safetensors/.pt file, a folder with one (such as RUN/best), "
            "or a Hub repo id org/name[@revision]",
    "output_path": "folder to write results.json and per_user.csv into; without it the results are only printed",
    "overwrite": "replace results.json and per_user.csv that already exist in --output_path",
    "seed": "seed of the seen/unseen user split and of the training-pair caps",
    "inner_lr": "Adam learning rate of each user's adaptation",
    "eval_inner_epochs": "Adam steps of each user's adaptation before scoring; 0 scores the meta-initialisation",
}

DESCRIPTIONS = {
    "train": "Meta-train MRM (MAML-style with the Robust Personalization Objective).\n\n"
             "Settings: the defaults shown below, replaced by --preset, replaced by explicit flags.",
    "evaluate": "Evaluate a checkpoint with the user-level protocol (seen, unseen, overall, worst 10%).\n\n"
                "Settings, from lowest to highest precedence: the defaults shown below, the settings recorded in the "
                "checkpoint's config.json (checkpoints saved by this project record them), --preset, explicit flags.",
}

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _choice(choices: tuple[str, ...]):
    """Return an argparse type that matches `choices` case-insensitively and returns their spelling."""
    by_lower = {choice.lower(): choice for choice in choices}

    def convert(text: str) -> str:
        return by_lower.get(text.strip().lower(), text)

    return convert


def _format_value(value) -> str:
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return str(value)


def presets_epilog(command: str) -> str:
    """List each preset's settings; for `evaluate` only the settings evaluation uses."""
    lines = ["presets (--preset NAME sets these values; explicit flags override them):"]
    for name in sorted(PRESETS):
        values = PRESETS[name]
        if command == "evaluate":
            values = {key: value for key, value in values.items() if key in CHECKPOINT_SETTINGS}
        settings = ", ".join(f"{key}={_format_value(value)}" for key, value in values.items())
        lines.append(textwrap.fill(settings, width=100, initial_indent=f"  {name}: ", subsequent_indent="    "))
    return "\n".join(lines)


def build_parser(command: str) -> argparse.ArgumentParser:
    """Parser whose options mirror `TrainConfig` one-to-one (defaults None: unset flags keep the preset's value)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m mrm {command}",
        description=DESCRIPTIONS[command],
        epilog=presets_epilog(command),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    preset_help = "published settings to start from (listed below); explicit flags override them"
    if command == "evaluate":
        preset_help = ("published evaluation settings (listed below); they replace the settings recorded with "
                       "the checkpoint, and explicit flags replace both")
    parser.add_argument("--preset", choices=sorted(PRESETS), help=preset_help)
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for spec in dataclasses.fields(TrainConfig):
        hint = hints[spec.name]
        help_text = spec.metadata.get("help", "")
        if command == "evaluate":
            help_text = EVALUATE_HELP.get(spec.name, help_text)
        default = getattr(defaults, spec.name)
        if default not in (None, ""):
            help_text += f" (default: {_format_value(default)})"
        kwargs: dict = {"default": None, "help": help_text}
        if command == "evaluate" and spec.name in TRAINING_ONLY:
            kwargs["help"] = argparse.SUPPRESS
        if hint in (bool, "bool"):
            kwargs.update(type=_parse_bool, nargs="?", const=True, metavar="BOOL")
        elif typing.get_origin(hint) is list:
            kwargs.update(type=int, nargs="+", metavar="N")
        elif "choices" in spec.metadata:
            kwargs.update(type=_choice(spec.metadata["choices"]), choices=spec.metadata["choices"])
        else:
            base = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
            if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
                hint = base[0]
            kwargs["type"] = hint if hint in (int, float, str) else str
        parser.add_argument(f"--{spec.name}", **kwargs)
    parser.add_argument("--log_level", default="INFO", type=_choice(LOG_LEVELS), choices=LOG_LEVELS,
                        help="logging level (default: INFO)")
    return parser


def checkpoint_config(checkpoint_path: Path) -> dict:
    """Return the `config.json` beside a checkpoint, or {} when it is missing or unreadable (published `.pt` files)."""
    folder = checkpoint_path if checkpoint_path.is_dir() else checkpoint_path.parent
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def checkpoint_settings(checkpoint_path: Path) -> dict:
    """Evaluation settings recorded in the `config.json` beside a checkpoint (empty for published `.pt` files).

    `training` contains the run's settings; an `adaptation` entry (inner_lr,
    steps) names the adaptation its reported numbers used and takes precedence.
    """
    config = checkpoint_config(checkpoint_path)
    training = config.get("training") or {}
    settings = {key: training[key] for key in CHECKPOINT_SETTINGS if key in training}
    adaptation = config.get("adaptation") or {}
    if "inner_lr" in adaptation:
        settings["inner_lr"] = adaptation["inner_lr"]
    if "steps" in adaptation:
        settings["eval_inner_epochs"] = adaptation["steps"]
    return settings


def warn_if_encoders_differ(checkpoint_path: Path, embed_pt: str) -> None:
    """Log a warning when the checkpoint and the embedding file record different encoders.

    Two encoders of the same width pass the width check, but the head's rewards
    mean nothing on another encoder's embeddings. Files without a record
    (published ones) are not compared.
    """
    from mrm.data import read_encoder_record

    checkpoint_encoder = checkpoint_config(checkpoint_path).get("encoder_id")
    record = read_encoder_record(embed_pt)
    if checkpoint_encoder and record is not None and record["encoder_id"] != checkpoint_encoder:
        logger.warning(
            "the checkpoint was trained on embeddings of %s, but %s was embedded with %s; "
            "embed the data with the checkpoint's encoder, or the accuracies mean nothing",
            checkpoint_encoder, embed_pt, record["encoder_id"],
        )


def config_from_args(args: argparse.Namespace, checkpoint_defaults: dict | None = None) -> TrainConfig:
    """Merge settings: dataclass defaults < checkpoint's recorded settings < preset < explicit flags."""
    values = dict(checkpoint_defaults or {})
    values.update(PRESETS[args.preset] if args.preset else {})
    values.update(explicit_flags(args))
    return TrainConfig(**values)


def explicit_flags(args: argparse.Namespace) -> dict:
    """Return the `TrainConfig` settings given as flags on the command line."""
    return {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(TrainConfig) if getattr(args, spec.name) is not None}


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _setup_logging(level: str, output_path: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if output_path:
        Path(output_path).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_path) / "train.log", encoding="utf-8"))
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)


def format_summary(results: dict, title: str) -> str:
    """Format the adapted and meta-initialisation accuracies as a readable table; missing figures show as n/a."""
    lines = [title, f"{'':14}{'adapted':>10}{'meta-init':>11}"]
    for key, label in (("seen", "seen"), ("unseen", "unseen"), ("overall", "overall"), ("worst10", "worst 10%"), ("std", "std")):
        lines.append(f"{label:14}{_cell(results.get(key)):>10}{_cell(results['init'].get(key)):>11}")
    lines.append(f"users: {results['num_seen']} seen, {results['num_unseen']} unseen; skipped {len(results.get('skipped_users', {}))}")
    if "selected_on" in results:
        lines.append(f"epoch {results['best_epoch']} selected on {results['selected_on']}")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{value:.4f}"
    return "n/a"


def run_train(argv: list[str]) -> int:
    args = build_parser("train").parse_args(argv)
    _setup_logging(args.log_level, None)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    config = config_from_args(args)

    from mrm.hub import HubError
    from mrm.meta_train import TrainingDivergedError, meta_train, prepare_run

    # Every check runs before the output folder is touched; train.log opens after them.
    explicit = set(explicit_flags(args))
    try:
        inputs = prepare_run(config, explicit)
    except KeyboardInterrupt:
        logger.warning("training cancelled before it started")
        return 130
    except (ValueError, FileNotFoundError, HubError) as error:
        logger.error("%s", error)
        return 2
    _setup_logging(args.log_level, config.output_path)
    if not config.output_path:
        logger.warning("no --output_path: nothing will be saved (no checkpoint, metrics or results); "
                       "pass --output_path RUN_FOLDER to keep the trained model")

    try:
        result = meta_train(inputs.config, inputs=inputs)
    except KeyboardInterrupt:
        logger.warning("training cancelled")
        return 130
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    except (TrainingDivergedError, RuntimeError) as error:
        # A run that started and then failed is reported in one line, and progress.json records it as
        # failed. Causes: a non-finite loss, or a torch error such as running out of GPU memory.
        logger.error("training failed: %s", error)
        logger.debug("traceback of the failure", exc_info=True)
        return 1
    print(format_summary(result.results, "Meta-training finished: user-level accuracy"))
    if result.output_path:
        print(f"run folder: {result.output_path}")
    return 0


RESULT_FILES = ("results.json", "per_user.csv")


def check_results_folder(config: TrainConfig) -> None:
    """Raise ValueError when `evaluate` could not write its results into `--output_path` or would replace some."""
    from mrm.run_folder import check_folder_path

    if not config.output_path:
        return
    folder = check_folder_path(config.output_path)
    existing = [name for name in RESULT_FILES if (folder / name).exists()]
    if existing and not config.overwrite:
        raise ValueError(
            f"--output_path {folder} already contains {' and '.join(existing)}; "
            "choose another folder, or pass --overwrite to replace them"
        )


def run_evaluate(argv: list[str]) -> int:
    args = build_parser("evaluate").parse_args(argv)
    _setup_logging(args.log_level, None)
    if not args.ckpt:
        logger.error("--ckpt is required: a checkpoint file, folder or Hub repo id such as ModalityDance/MRM-Reddit150-V2")
        return 2

    from mrm.data import DataError, build_user_splits, read_embedding_files
    from mrm.evaluate import evaluate, nonfinite_to_none, write_per_user_csv
    from mrm.fileio import write_json_atomic
    from mrm.hub import resolve_checkpoint
    from mrm.meta_train import check_not_run_folder, resolve_device, warn_if_no_unseen_users
    from mrm.model import load_mrm

    try:
        # The flags alone are checked first, so a mistake is reported before any download.
        flag_config = config_from_args(args)
        flag_config.validate_evaluation()
        check_results_folder(flag_config)
        check_not_run_folder(args.ckpt)
        checkpoint_path = resolve_checkpoint(args.ckpt)
        recorded = checkpoint_settings(checkpoint_path)
        config = config_from_args(args, recorded)
        config.validate_evaluation()
        overridden = set(explicit_flags(args)) | set(PRESETS[args.preset] if args.preset else ())
        recorded_used = {key: value for key, value in recorded.items() if key not in overridden}
        if recorded_used:
            logger.info("using settings recorded with the checkpoint (pass the flags to override): %s", recorded_used)
        defaults_used = {key: getattr(config, key) for key in CHECKPOINT_SETTINGS if key not in overridden and key not in recorded}
        if defaults_used:
            logger.info("using default settings (pass the flags or --preset to change them): %s", defaults_used)
        device = resolve_device(config.device)
        model = load_mrm(checkpoint_path, device=str(device))
        data = read_embedding_files(config.embed_pt, config.meta_json)
        if data.hidden_size != model.in_dim:
            raise DataError(
                f"embedding width {data.hidden_size} in {config.embed_pt} does not match the checkpoint's in_dim "
                f"{model.in_dim}; embed the data with the reward model the checkpoint was trained on"
            )
        warn_if_encoders_differ(checkpoint_path, config.embed_pt)
        splits = build_user_splits(data, config.seed, config.dataset, config.seen_train_limit, config.unseen_train_limit, config.score_threshold)
        warn_if_no_unseen_users(splits, config.unseen_train_limit)
        embeddings = data.embeddings if device.type == "cpu" else data.embeddings.to(device)
        report = evaluate(model, embeddings, splits.seen, splits.unseen, config.inner_lr, config.eval_inner_epochs)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        logger.error("%s", error)
        return 2

    results = {**report.to_results(), "checkpoint": config.ckpt, "skipped_users": splits.skipped,
               "protocol": {"inner_lr": config.inner_lr, "eval_inner_epochs": config.eval_inner_epochs, "seed": config.seed,
                            "seen_train_limit": config.seen_train_limit, "unseen_train_limit": config.unseen_train_limit}}
    print(format_summary(results, f"Evaluation of {config.ckpt}: user-level accuracy"))
    # NaN (an empty group of users) is written as null, which strict JSON readers accept.
    results = nonfinite_to_none(results)
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
    if command == "push":
        from mrm.push import main as push_main

        return push_main(rest)
    if command == "demo":
        from mrm.demo_build import main as demo_main

        return demo_main(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2
