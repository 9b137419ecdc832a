"""The `embed` command: turn a preference dataset into an embedding file pair.

    python -m mrm embed reddit --out data/reddit
    python -m mrm embed prism --encoder demo --out data/prism_demo --max_users 20
    python -m mrm embed pairs --input my_pairs.csv --out data/mine --val_fraction 0.3
    accelerate launch -m mrm embed reddit --out data/reddit    # one process per GPU

The dataset is read (`mrm.datasets`), every unique (prompt, response)
conversation is embedded once, and `PREFIX.pt` + `PREFIX.json` are written
with `mrm.data.write_embedding_files`. Entries keep their texts; when the
encoder has a score head, its rewards are stored as `chosen_model_score` and
`rejected_model_score` (`chosen_score`/`rejected_score` are PRISM's human
ratings).

Work is cut into chunks of conversations written to `PREFIX.shards/` as they
finish (`mrm.shards`). Under `accelerate launch` each process embeds every
`num_processes`-th chunk, and the main process merges the chunks at the end.
A rerun with the same encoder and inputs skips the chunks already written, so
an interrupted run resumes where it stopped.

Existing `PREFIX.pt` and `PREFIX.json` files are replaced only with
`--overwrite`. Ctrl-C or SIGTERM stops the command with exit code 130 and a
one-line message that reports how many chunks are on disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from mrm.data import write_embedding_files, write_encoder_record
from mrm.datasets import (
    DEFAULT_SPLIT_SEED,
    PRISM_MIN_CONVERSATIONS,
    DatasetError,
    PreparedDataset,
    load_pairs_file,
    load_prism,
    load_reddit,
)
from mrm.encoders import DEFAULT_ENCODER, DEMO_ENCODER, EncoderLoadError, load_encoder
from mrm.meta_train import resolve_device
from mrm.shards import (
    MANIFEST_NAME,
    ShardError,
    chunk_path,
    chunks_for_process,
    embed_shards,
    make_manifest,
    merge_shards,
    num_chunks,
    prepare_shard_dir,
    shard_dir_for,
)

logger = logging.getLogger(__name__)

DATASETS = ("reddit", "prism", "pairs")
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# `train` and `evaluate` split users into seen and unseen halves and need a seen user with train and val pairs.
MIN_TRAINING_USERS = 2


class EmbedInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM. Its message reports the chunks on disk and how to continue."""


@dataclass
class EmbedConfig:
    """Settings of `python -m mrm embed`; each field is the command-line flag of the same name."""

    dataset: str = field(metadata={"help": "Dataset to embed: reddit, prism or pairs (a CSV / JSON Lines file)."})
    out: str = field(metadata={"help": "Output prefix: writes PREFIX.pt and PREFIX.json."})
    encoder: str = field(
        default=DEFAULT_ENCODER,
        metadata={"help": "Reward model id or local path, or 'demo' for the offline demo encoder."},
    )
    input: str | None = field(
        default=None,
        metadata={"help": (
            "Pairs file to embed (required for the pairs dataset): CSV with a header row, or JSON Lines. "
            "Columns: prompt, chosen (the preferred response), rejected, and optionally user_id (pairs without "
            "one go to the user 'default') and split (train or val, where test and validation also mean val; "
            "it overrides --pairs_split and --val_fraction for that row)."
        )},
    )
    batch_size: int = field(default=16, metadata={"help": "Conversations per forward pass."})
    max_users: int | None = field(
        default=None, metadata={"help": "Keep only the first N users in sorted id order, for quick runs."}
    )
    revision: str | None = field(default=None, metadata={"help": "Encoder revision (branch, tag or commit) on the Hub."})
    data_revision: str | None = field(
        default=None, metadata={"help": "Dataset revision on the Hub (default: the Reddit parquet branch, PRISM main)."}
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": (
            "Folder of already downloaded raw dataset files, read instead of the Hub. "
            "reddit: the comparison files of openai/summarize_from_feedback anywhere below it, either the Hub's "
            "parquet conversion (comparisons/train/*.parquet, comparisons/validation/*.parquet) or the original "
            "JSON Lines files (comparisons/batch*.json); a path naming train or validation sets the split, "
            "otherwise each row's split field does, and files in folders whose names start with axis (such as the "
            "release's axis_evals/) are skipped. --out must then be outside this folder. "
            "prism: survey.jsonl and conversations.jsonl of HannahRoseKirk/prism-alignment directly in it. "
            "Not used with the pairs dataset."
        )},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Hugging Face Hub cache folder for the model and dataset downloads."}
    )
    embedding_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the encoder's embedding cache, shared between runs (default: no cache)."},
    )
    seed: int = field(
        default=DEFAULT_SPLIT_SEED,
        metadata={"help": (
            "Seed of the per-user train/val splits: PRISM's 50/50 conversation split (the published training "
            "seed is 42) and the pairs drawn by --val_fraction."
        )},
    )
    pairs_split: str = field(
        default="train",
        metadata={"help": "Split given to the pairs of a pairs file that have no split column value: train or val."},
    )
    val_fraction: float = field(
        default=0.0,
        metadata={"help": (
            "Fraction of each user's pairs without a split value to hold out as val (pairs file only; "
            "0 holds out none). At least one pair is held out and one kept for train when a user has two or "
            "more, drawn with --seed. Pairs are drawn one by one, so a prompt can have pairs in both splits."
        )},
    )
    chunk_size: int = field(default=1024, metadata={"help": "Conversations per resumable shard chunk."})
    overwrite_shards: bool = field(
        default=False,
        metadata={"help": "Delete a PREFIX.shards folder left by a run with another encoder or inputs instead of failing."},
    )
    keep_shards: bool = field(default=False, metadata={"help": "Keep PREFIX.shards after the final files are written."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace PREFIX.pt and PREFIX.json when they exist instead of failing."}
    )
    device: str | None = field(
        default=None,
        metadata={"help": "Device of the encoder: cpu, cuda or cuda:N. Default: the launcher's choice, the "
                          "process's GPU when there is one, else the CPU. Not allowed with several processes."},
    )
    dtype: str = field(
        default="float32",
        metadata={"help": "Storage type of PREFIX.pt: float32, or bfloat16 for half the size (what a bf16 model outputs)."},
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `python -m mrm embed`, one flag per `EmbedConfig` field."""
    parser = argparse.ArgumentParser(
        prog="python -m mrm embed",
        description="Embed a preference dataset with a reward model into PREFIX.pt + PREFIX.json.",
    )
    for item in dataclasses.fields(EmbedConfig):
        help_text = item.metadata["help"]
        if item.name == "dataset":
            parser.add_argument("dataset", choices=DATASETS, help=help_text)
        elif item.type == "bool":
            parser.add_argument(f"--{item.name}", action="store_true", help=help_text)
        elif item.default is dataclasses.MISSING:
            parser.add_argument(f"--{item.name}", required=True, help=help_text)
        else:
            kind = {"int": int, "int | None": int, "float": float}.get(item.type, str)
            if item.default is not None and "default" not in help_text:
                help_text = f"{help_text} Default: {item.default}."
            parser.add_argument(f"--{item.name}", type=kind, default=item.default, help=help_text)
    return parser


def check_config(config: EmbedConfig) -> None:
    """Raise ValueError naming the first invalid setting."""
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}")
    if config.dataset == "pairs" and not config.input:
        raise ValueError("the pairs dataset needs --input FILE (a CSV or JSON Lines file of prompt, chosen, rejected)")
    if config.dataset != "pairs" and config.input:
        raise ValueError(f"--input is only used with the pairs dataset; for {config.dataset} use --data_dir")
    if config.dataset == "pairs" and config.data_dir:
        raise ValueError("--data_dir is only used with the reddit and prism datasets; for pairs use --input FILE")
    if config.data_revision and (config.data_dir or config.dataset == "pairs"):
        source = "--data_dir" if config.data_dir else "a pairs file"
        raise ValueError(f"--data_revision picks a revision of the Hub dataset, so it has no effect with {source}; drop it")
    for name in ("batch_size", "chunk_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(config, name)}")
    if config.max_users is not None and config.max_users < 1:
        raise ValueError(f"--max_users must be at least 1, got {config.max_users}")
    if config.dtype not in STORAGE_DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(STORAGE_DTYPES)}, got {config.dtype!r}")
    if config.pairs_split not in ("train", "val"):
        raise ValueError(f"--pairs_split must be train or val, got {config.pairs_split!r}")
    if not 0.0 <= config.val_fraction < 1.0:
        raise ValueError(f"--val_fraction must be at least 0 and below 1, got {config.val_fraction}")
    if config.val_fraction > 0 and config.dataset != "pairs":
        raise ValueError(f"--val_fraction is only used with the pairs dataset; {config.dataset} has its own splits")
    if config.val_fraction > 0 and config.pairs_split != "train":
        raise ValueError("--val_fraction moves part of the train pairs to val, so it cannot be combined with --pairs_split val")
    if config.device is not None:
        resolve_device(config.device)  # raises ValueError naming --device and the choices
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("--device cannot be combined with a multi-process launch: each process uses its own GPU")
    check_output_prefix(config.out)
    if config.dataset == "reddit" and config.data_dir:
        check_out_outside_data_dir(config.out, config.data_dir)
    if not config.overwrite:
        check_no_final_files(config.out)


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """Return the `PREFIX.pt` and `PREFIX.json` paths of an output prefix."""
    prefix = Path(out)
    return prefix.with_name(prefix.name + ".pt"), prefix.with_name(prefix.name + ".json")


def check_no_final_files(out: str) -> None:
    """Raise ValueError when `PREFIX.pt` or `PREFIX.json` exists, so that a rerun never replaces them silently.

    The shard folder of an unfinished run does not count, because that run
    has not written the final files yet.
    """
    existing = [str(path) for path in output_paths(out) if path.exists()]
    if existing:
        raise ValueError(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "choose another --out, or pass --overwrite to replace them"
        )


def check_out_outside_data_dir(out: str, data_dir: str) -> None:
    """Raise ValueError when the `--out` prefix lies inside the Reddit `--data_dir`.

    Every JSON, JSON Lines and parquet file below that folder is read as
    comparisons, so the next run would read this run's output as input.
    """
    folder = Path(data_dir).resolve()
    out_folder = Path(out).resolve().parent
    if out_folder == folder or folder in out_folder.parents:
        raise ValueError(
            f"--out {out} is inside --data_dir {data_dir}, where every .json, .jsonl and .parquet file is read as "
            f"comparisons, so the next run would read this run's output; choose an --out outside {data_dir}"
        )


def check_output_prefix(out: str) -> None:
    """Raise ValueError when a folder above the `--out` prefix is an existing file."""
    for folder in Path(out).parents:
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(
                    f"--out {out}: {folder} is a file, not a folder; choose an output prefix inside a folder"
                )
            return


def load_dataset(config: EmbedConfig) -> PreparedDataset:
    """Read the dataset that `config` names."""
    if config.dataset == "reddit":
        return load_reddit(config.data_dir, config.data_revision, config.cache_dir, config.max_users)
    if config.dataset == "prism":
        return load_prism(config.data_dir, config.data_revision, config.cache_dir, config.max_users, config.seed)
    return load_pairs_file(config.input, config.max_users, config.pairs_split, config.val_fraction, config.seed)


def attach_model_scores(users: dict[str, list[dict]], scores: Tensor | None) -> dict[str, list[dict]]:
    """Add `chosen_model_score`/`rejected_model_score` to every entry when scores exist."""
    if scores is None:
        return users
    values = scores.tolist()
    return {
        user_id: [
            {**entry, "chosen_model_score": values[entry["chosen_idx"]], "rejected_model_score": values[entry["rejected_idx"]]}
            for entry in entries
        ]
        for user_id, entries in users.items()
    }


def split_warnings(
    users: Mapping[str, list[dict]], json_path: Path, dataset: str = "pairs", max_users: int | None = None
) -> list[str]:
    """Return what keeps `train` and `evaluate` from using all users of a written file, with the fix.

    Both commands split users into seen and unseen halves and skip a user who
    lacks train or val pairs, so they need at least two users with both.
    `dataset` and `max_users` are the settings of the run, which choose the fix.
    """
    complete = [user_id for user_id, entries in users.items() if {e["split"] for e in entries} >= {"train", "val"}]
    if len(complete) == len(users) and len(users) >= MIN_TRAINING_USERS:
        return []
    counts = Counter(entry["split"] for entries in users.values() for entry in entries)
    if len(complete) >= MIN_TRAINING_USERS:
        message = (
            f"{json_path}: {len(users) - len(complete)} of {len(users)} users have no train or no val pairs, "
            "so train and evaluate skip them."
        )
        if dataset == "pairs":
            message += " Give each of them pairs of both splits to use them."
        return [message]
    fixes = []
    if max_users is not None and len(users) >= max_users and (dataset != "pairs" or len(users) < MIN_TRAINING_USERS):
        fixes.append("raise --max_users to include more users, or leave it unset")
    elif dataset == "reddit":
        fixes.append("use comparison files with more workers who have comparisons in both the train and the validation split")
    elif dataset == "prism":
        fixes.append(
            f"use files with more participants who have {PRISM_MIN_CONVERSATIONS} or more conversations with rated replies"
        )
    elif len(users) < MIN_TRAINING_USERS:
        fixes.append(f"give the rows a user_id column with at least {MIN_TRAINING_USERS} different users")
    if dataset == "pairs" and (counts["val"] == 0 or counts["train"] == 0 or len(complete) < len(users)):
        fixes.append("give each user pairs of both splits with a split column (train or val) or with --val_fraction 0.3")
    return [
        f"{json_path} is not usable by train or evaluate yet. They need at least {MIN_TRAINING_USERS} users with "
        f"both train and val pairs, and it has {len(users)} user(s), {len(complete)} of them with both splits "
        f"({counts['train']} train and {counts['val']} val pairs). To fix it, " + ", and ".join(fixes) + "."
    ]


# ----------------------------------------------------------------------------- command


@dataclass
class EmbedResult:
    """Output paths and counts of a finished embed run."""

    pt_path: Path
    json_path: Path
    num_users: int
    num_pairs: int
    num_conversations: int
    num_truncated: int
    stats: dict


def run_embed(config: EmbedConfig, encoder=None) -> EmbedResult | None:
    """Run the embed command; return the result on the main process, None on the others.

    `encoder` replaces `mrm.encoders.load_encoder(config.encoder, ...)`, for
    callers that already hold one; it is loaded only when chunks remain to embed.
    A KeyboardInterrupt is raised again as `EmbedInterrupted`, whose message
    reports how many chunks are on disk and how to continue.
    """
    from accelerate import PartialState

    check_config(config)

    # accelerate sets up gloo for a multi-process launch on a machine without
    # CUDA only when asked to run on the CPU.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    state = PartialState(cpu=True) if launched and not torch.cuda.is_available() else PartialState()

    # Read the dataset; the main process goes first so that Hub downloads happen once.
    try:
        with state.main_process_first():
            dataset = load_dataset(config)
    except KeyboardInterrupt as error:
        raise EmbedInterrupted("interrupted while reading the dataset, before any embedding") from error
    conversations = dataset.conversations
    logger.info(
        "%s: %d users, %d pairs, %d unique conversations (%s)",
        dataset.name, len(dataset.users), dataset.num_pairs, len(conversations), dataset.stats,
    )

    shard_dir = shard_dir_for(config.out)
    total = num_chunks(len(conversations), config.chunk_size)
    try:
        embeddings, scores, num_truncated = embed_and_merge(config, conversations, encoder, state, shard_dir)
    except KeyboardInterrupt as error:
        done = sum(chunk_path(shard_dir, chunk).is_file() for chunk in range(total))
        raise EmbedInterrupted(
            f"interrupted after {done} of {total} chunks; rerun the same command to resume"
        ) from error
    if embeddings is None:
        return None

    # Write the final files. Each is written atomically, but an interrupt can fall between the two.
    if num_truncated:
        logger.warning("%d conversations were truncated to the encoder's maximum length", num_truncated)
    users = attach_model_scores(dataset.users, scores)
    try:
        pt_path, json_path = write_embedding_files(config.out, embeddings, users)
    except KeyboardInterrupt as error:
        raise EmbedInterrupted(
            f"interrupted while writing {config.out}.pt and {config.out}.json after all {total} chunks were embedded; "
            "rerun the same command with --overwrite to write them again from the chunks"
        ) from error
    # The shard manifest names the encoder as the chunks were made, even when this run loaded none.
    manifest = json.loads((shard_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    write_encoder_record(pt_path, manifest["encoder_id"], manifest.get("encoder_revision"), int(embeddings.shape[1]))
    if not config.keep_shards:
        shutil.rmtree(shard_dir, ignore_errors=True)
    for message in split_warnings(users, json_path, config.dataset, config.max_users):
        logger.warning("%s", message)
    return EmbedResult(
        pt_path=pt_path, json_path=json_path, num_users=len(users), num_pairs=dataset.num_pairs,
        num_conversations=len(conversations), num_truncated=num_truncated, stats=dataset.stats,
    )


def embed_and_merge(
    config: EmbedConfig, conversations: Sequence[tuple], encoder, state, shard_dir: Path
) -> tuple[Tensor | None, Tensor | None, int]:
    """Embed the chunks that are not on disk and merge all of them on the main process.

    Returns (embeddings [N, H], scores [N] or None, truncated count) on the
    main process and (None, None, 0) on the others.
    """
    # Check or create the shard folder on the main process.
    encoder_id = config.encoder if encoder is None else encoder.encoder_id
    revision = config.revision if encoder is None else encoder.revision
    manifest = make_manifest(encoder_id, revision, conversations, config.chunk_size)
    if state.is_main_process:
        prepare_shard_dir(shard_dir, manifest, overwrite=config.overwrite_shards)
    state.wait_for_everyone()

    # Embed this process's chunks.
    total = num_chunks(len(conversations), config.chunk_size)
    mine = chunks_for_process(total, state.process_index, state.num_processes)
    if any(not chunk_path(shard_dir, chunk).is_file() for chunk in mine):
        if encoder is None:
            device = state.device if config.device is None else resolve_device(config.device)
            encoder = load_encoder(
                config.encoder, device=device, revision=config.revision,
                cache_dir=config.embedding_cache_dir,
                **({"hub_cache_dir": config.cache_dir} if config.cache_dir and config.encoder != DEMO_ENCODER else {}),
            )
        embed_shards(
            conversations, encoder, shard_dir, config.chunk_size, state.process_index, state.num_processes,
            config.batch_size, progress=state.is_main_process,
        )
    state.wait_for_everyone()
    if not state.is_main_process:
        return None, None, 0
    return merge_shards(shard_dir, len(conversations), config.chunk_size, STORAGE_DTYPES[config.dtype])


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m mrm embed`; return the exit code.

    Ctrl-C and SIGTERM both stop the run with exit code 130. SIGTERM is turned
    into KeyboardInterrupt while the command runs in the main thread.
    """
    args = build_parser().parse_args(argv)
    config = EmbedConfig(**vars(args))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt) if in_main_thread else None
    try:
        result = run_embed(config)
    except EmbedInterrupted as error:
        print(error, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted before any embedding; rerun the same command to start again", file=sys.stderr)
        return 130
    except (ValueError, ShardError, DatasetError, EncoderLoadError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler if previous_handler is not None else signal.SIG_DFL)
    if result is not None:
        print(
            f"wrote {result.pt_path} ({result.num_conversations} conversations) and {result.json_path} "
            f"({result.num_users} users, {result.num_pairs} pairs); truncated: {result.num_truncated}"
        )
    return 0
