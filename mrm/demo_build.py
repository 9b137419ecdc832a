"""Building the offline demo bundle: `python -m mrm demo build`.

Embeds the demo corpus (`mrm.demo`) with the demo encoder, writes the
simulated annotators' labelled pairs as embedding files, meta-trains MRM on
them with `mrm.meta_train`, evaluates it beside a global Bradley-Terry head,
and writes the checkpoint, data and card into `assets/demo/`. The same seed,
machine and torch version reproduce every file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mrm.baselines import fit_global_head, user_accuracy
from mrm.demo import (
    ARCHETYPES,
    ATTRIBUTES,
    CORPUS_PATH,
    DEMO_DIR,
    LABEL_COUNTS,
    PREFS_NAME,
    CorpusError,
    PopulationConfig,
    load_corpus,
    make_annotators,
    noise_ceiling,
    simulate_labels,
    summary_rows,
)
from mrm.evaluate import summarize
from mrm.fileio import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from mrm.meta_train import TrainConfig
    from mrm.model import MRM

logger = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    """Settings of `python -m mrm demo build`; the defaults build the committed `assets/demo/` bundle."""

    out: str = field(default=str(DEMO_DIR), metadata={"help": "folder to write the bundle into"})
    corpus: str = field(default=str(CORPUS_PATH), metadata={"help": "corpus JSONL file"})
    seed: int = field(default=0, metadata={"help": "seed of annotators, labels, user split and training"})
    epochs: int = field(default=200, metadata={"help": "meta-training epochs"})
    num_bases: int = field(default=4, metadata={"help": "K, the number of base rewards"})
    inner_lr: float = field(default=0.5, metadata={"help": "Adam learning rate of the per-user adaptation"})
    train_inner_epochs: int = field(default=5, metadata={"help": "inner Adam steps during meta-training"})
    eval_inner_epochs: int = field(default=20, metadata={"help": "inner Adam steps when adapting to a user at evaluation"})
    meta_lr: float = field(default=5e-3, metadata={"help": "Adam learning rate of the outer update"})
    tasks_per_batch: int = field(default=4, metadata={"help": "users per outer step"})
    val_ratio: float = field(default=0.7, metadata={"help": "share of a user's training pairs in the query set"})
    log_freq: int = field(default=20, metadata={"help": "evaluate every N epochs"})
    global_head_steps: int = field(
        default=300, metadata={"help": "full-batch Adam steps of the global Bradley-Terry baseline; 0 skips it"}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "write into --out even when it contains a training run (a progress.json file)"}
    )
    population: PopulationConfig = field(default_factory=PopulationConfig, metadata={"help": "simulated annotators"})


@dataclass
class BuildResult:
    """The output folder of a build and the figures on its card."""

    out: Path
    card: dict


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """Run single-threaded with deterministic kernels, restoring the previous settings afterwards.

    One thread makes CPU reductions run in a fixed order, so the same seed
    gives a bitwise-equal checkpoint on the same machine and torch version.
    """
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def build_bundle(config: BuildConfig, encoder=None) -> BuildResult:
    """Embed the corpus, simulate the labels, meta-train MRM and write the bundle into `config.out`.

    `encoder` defaults to `load_encoder("demo")`; passing a loaded one saves loading it again.
    """
    from mrm.encoders import DEMO_ENCODER, load_encoder

    check_build_config(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with deterministic_torch():
        # Labels: annotators and their pairs depend only on the corpus attributes and the seed.
        posts = load_corpus(config.corpus)
        annotators = make_annotators(config.population, config.seed)
        users = simulate_labels(posts, annotators, config.population, config.seed)

        # Embeddings: one row per (post, summary), in corpus order.
        encoder = encoder if encoder is not None else load_encoder(DEMO_ENCODER)
        rows = summary_rows(posts)
        embeddings = encoder.encode([p.prompt for p, _ in rows], [s.text for _, s in rows], batch_size=32).embeddings  # (N, H)
        return _train_and_write(config, out, posts, annotators, users, embeddings, encoder)


def training_config(config: BuildConfig, embed_pt: str | Path, meta_json: str | Path) -> TrainConfig:
    """Return the meta-training settings of a build on the given embedding files."""
    from mrm.meta_train import TrainConfig

    return TrainConfig(
        embed_pt=str(embed_pt),
        meta_json=str(meta_json),
        dataset="REDDIT",
        seen_train_limit=-1,
        unseen_train_limit=-1,
        hidden_layers=[config.num_bases],
        use_bias=False,
        inner_lr=config.inner_lr,
        meta_lr=config.meta_lr,
        train_inner_epochs=config.train_inner_epochs,
        eval_inner_epochs=config.eval_inner_epochs,
        tasks_per_batch=config.tasks_per_batch,
        epochs=config.epochs,
        val_ratio=config.val_ratio,
        seed=config.seed,
        device="cpu",
        log_freq=config.log_freq,
        save_freq=0,
        select_on="val",
    )


def check_build_config(config: BuildConfig) -> None:
    """Raise ValueError naming the first invalid setting or output folder, before any work is done."""
    from mrm.run_folder import check_folder_path

    out = check_folder_path(config.out, flag="--out")
    if (out / "progress.json").exists() and not config.overwrite:
        raise ValueError(
            f"--out {out} contains a training run (progress.json), whose results.json and config.json the "
            "bundle would replace; choose another folder, or pass --overwrite"
        )
    if config.num_bases < 1:
        raise ValueError(f"--num_bases {config.num_bases} must be at least 1")
    if config.global_head_steps < 0:
        raise ValueError(f"--global_head_steps {config.global_head_steps} must be zero (no baseline) or positive")
    training_config(config, "-", "-").validate()


def _train_and_write(config, out, posts, annotators, users, embeddings, encoder) -> BuildResult:
    from mrm.data import build_user_splits, read_embedding_files, write_embedding_files
    from mrm.meta_train import meta_train
    from mrm.model import save_mrm

    pt_path, json_path = write_embedding_files(out / PREFS_NAME, embeddings, users)
    train_config = training_config(config, pt_path, json_path)

    # Meta-train in a scratch run folder; only its small result files are kept.
    with tempfile.TemporaryDirectory(prefix="mrm-demo-run-") as run_dir:
        train_config.output_path = run_dir
        result = meta_train(train_config)
        results = json.loads((Path(run_dir) / "results.json").read_text(encoding="utf-8"))
        shutil.copyfile(Path(run_dir) / "per_user.csv", out / "per_user.csv")
    write_json_atomic(out / "results.json", results)
    # Timings are left out so that rebuilding with the same seed reproduces every file.
    history = [{k: v for k, v in row.items() if k != "elapsed_s"} for row in result.history]
    write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))

    # Baselines on the same users: one global Bradley-Terry head, and the labels' noise ceiling.
    data = read_embedding_files(pt_path, json_path, mmap=False)
    splits = build_user_splits(data, config.seed, "REDDIT")
    baselines = {}
    if config.global_head_steps > 0:
        head = fit_global_head(data.embeddings, splits.seen, epochs=config.global_head_steps, seed=config.seed)
        baselines["global_bt"] = summarize(
            user_accuracy(head, data.embeddings, splits.seen), user_accuracy(head, data.embeddings, splits.unseen)
        )
    ceiling = noise_ceiling(posts, annotators, users)
    few_labels = accuracy_by_label_count(result.model, data.embeddings, splits.unseen, config)
    baselines["noise_ceiling"] = summarize(
        torch.tensor([ceiling[u.user_id] for u in splits.seen]), torch.tensor([ceiling[u.user_id] for u in splits.unseen])
    )

    training = {
        f.name: getattr(train_config, f.name)
        for f in fields(train_config)
        if f.name not in ("embed_pt", "meta_json", "output_path", "device", "ckpt", "overwrite")
    }
    extra_config = {
        "encoder_id": encoder.encoder_id,
        "encoder_revision": encoder.revision,
        "dataset": "demo",
        # The adaptation the figures on the card were measured with; the app can use the same.
        "adaptation": {"inner_lr": config.inner_lr, "steps": config.eval_inner_epochs},
        "training": training,
    }
    save_mrm(result.model, out, extra_config=extra_config)

    card = make_card(config, posts, annotators, results, baselines, encoder, result.model.in_dim, training)
    card["unseen_by_labels"] = few_labels
    write_json_atomic(out / "card.json", card)
    write_json_atomic(
        out / "annotators.json",
        [{**asdict(a), "split": "seen" if a.annotator_id in {u.user_id for u in splits.seen} else "unseen"} for a in annotators],
    )
    write_text_atomic(out / "README.md", render_card_markdown(card))
    return BuildResult(out=out, card=card)


def accuracy_by_label_count(model: MRM, embeddings: Tensor, users: Sequence, config: BuildConfig) -> list[dict]:
    """Return the mean test accuracy of `users` after adapting on only their first n training pairs, for n in `LABEL_COUNTS`.

    It estimates what a few labels in the app achieve for people who label like the simulated annotators.
    The training pairs are already in a seeded random order (`mrm.data.select_train_pairs`).
    """
    from mrm.evaluate import PairSets, score_users

    curve = []
    for count in LABEL_COUNTS:
        pair_sets = [PairSets(u.train_chosen[:count], u.train_rejected[:count], u.test_chosen, u.test_rejected) for u in users]
        scores = score_users(model, embeddings, pair_sets, config.inner_lr, config.eval_inner_epochs)
        curve.append({"labels": count, "accuracy": round(float(scores.after.mean()), 4)})
    return curve


def _figures(values: dict) -> dict[str, float]:
    return {key: round(float(values[key]), 4) for key in ("seen", "unseen", "overall", "worst10")}


def make_card(
    config: BuildConfig, posts, annotators, results: dict, baselines: dict, encoder, in_dim: int, training: dict
) -> dict:
    """Collect the numbers and settings of a build into the `card.json` dictionary."""
    return {
        "dataset": "demo",
        "encoder_id": encoder.encoder_id,
        "encoder_revision": encoder.revision,
        "in_dim": in_dim,
        "num_bases": config.num_bases,
        "seed": config.seed,
        "corpus": {"posts": len(posts), "summaries": sum(len(p.summaries) for p in posts), "attributes": list(ATTRIBUTES)},
        "population": {
            **asdict(config.population),
            "archetypes": {name: dict(zip(ATTRIBUTES, weights)) for name, weights in ARCHETYPES.items()},
        },
        "users": {"seen": results.get("num_seen"), "unseen": results.get("num_unseen")},
        "training": training,
        "selected_on": results.get("selected_on"),
        "best_epoch": results.get("best_epoch"),
        "mrm_adapted": _figures(results),
        "mrm_meta_init": _figures(results["init"]),
        **{name: _figures(values) for name, values in baselines.items()},
    }


def render_card_markdown(card: dict) -> str:
    """Write the human-readable card (`README.md`) of a demo bundle."""
    rows = [
        ("MRM, adapted to each user", "mrm_adapted"),
        ("MRM meta-initialisation, not adapted", "mrm_meta_init"),
        ("one global Bradley-Terry head", "global_bt"),
        ("noise ceiling: each annotator's true weights", "noise_ceiling"),
    ]
    table = ["| model | seen | unseen | overall | worst 10% |", "|---|---|---|---|---|"]
    for label, key in rows:
        if key in card:
            values = card[key]
            table.append(
                f"| {label} | " + " | ".join(f"{100 * values[k]:.1f}" for k in ("seen", "unseen", "overall", "worst10")) + " |"
            )
    population = card["population"]
    training = card["training"]
    curve = ["| labelled pairs | " + " | ".join(str(row["labels"]) for row in card.get("unseen_by_labels", [])) + " |"]
    curve.append("|---" * (len(curve[0].split("|")) - 2) + "|")
    curve.append("| accuracy | " + " | ".join(f"{100 * row['accuracy']:.1f}" for row in card.get("unseen_by_labels", [])) + " |")
    archetypes = "\n".join(
        f"- `{name}`: " + ", ".join(f"{attribute} {weight:+.1f}" for attribute, weight in weights.items())
        for name, weights in population["archetypes"].items()
    )
    return f"""---
library_name: mrm
tags:
- reward-model
- personalization
- meta-learning
- demo
---

# MRM demo checkpoint

A small Meta Reward Modeling head for the offline demo. It reads the {card["in_dim"]}-dimensional features of the demo encoder (`{card["encoder_id"]}`, {card["encoder_revision"]}) and mixes K = {card["num_bases"]} base rewards. It was meta-trained on simulated annotators who label summaries from this project's own corpus ({card["corpus"]["posts"]} posts, {card["corpus"]["summaries"]} summaries), so it demonstrates personalisation and is not a general reward model.

Rebuild it with `python -m mrm demo build --seed {card["seed"]} --epochs {training["epochs"]}`; the same seed, machine and torch version give a bitwise-equal checkpoint.

## Results

Mean user accuracy (%) on each annotator's test pairs. The test pairs come from posts that the annotator never labelled for training. {card["users"]["seen"]} annotators are seen (meta-training tasks) and {card["users"]["unseen"]} unseen. "Worst 10%" is the mean over the worst tenth of all annotators.

Adaptation runs {training["eval_inner_epochs"]} Adam steps at inner_lr {training["inner_lr"]} on the annotator's {population["train_pairs"]} training pairs. The epoch ({card["best_epoch"]}) was selected on held-out training pairs of unseen annotators, never on test pairs.

{chr(10).join(table)}

With fewer labels, as in the app: mean test accuracy (%) of the unseen annotators after adapting on their first n training pairs only, with the same adaptation settings.

{chr(10).join(curve)}

## Simulated annotators

There are {population["num_annotators"]} annotators. Each one takes the weights of one of these archetypes, in turn, plus Gaussian noise of std {population["weight_noise"]} on every weight. A positive weight prefers long, specific, casual or hedged summaries.

{archetypes}

An annotator prefers summary a over summary b of the same post with probability `sigmoid({population["beta"]} * w . (attributes_a - attributes_b))`. Each one labels {population["train_pairs"]} training pairs and {population["val_pairs"]} test pairs. A share of {population["val_post_fraction"]:.2f} of the posts is held out per annotator for the test pairs. `examples/ATTRIBUTES.md` defines the attributes.

## Files

- `model.safetensors`, `config.json`: the checkpoint (`mrm.load_mrm("assets/demo")`). `config.json` also records the encoder and the adaptation settings used above.
- `demo_prefs.pt`, `demo_prefs.json`: the labelled pairs as embedding files; `conversation_id` is the corpus `post_id`.
- `results.json`, `metrics.jsonl`, `per_user.csv`: the meta-training run's evaluation.
- `annotators.json`: every annotator's archetype, weights and seen/unseen split.
- `card.json`: the figures above as JSON.
"""


# ----------------------------------------------------------------------------- command line


def _add_config_arguments(parser: argparse.ArgumentParser, config_type: type) -> None:
    for item in fields(config_type):
        if item.name == "population":
            continue
        default = None if item.default is dataclasses.MISSING else item.default
        if isinstance(default, bool):
            parser.add_argument(f"--{item.name}", action="store_true", help=item.metadata.get("help", ""))
            continue
        parser.add_argument(
            f"--{item.name}",
            type=type(default),
            default=default,
            help=f"{item.metadata.get('help', '')} (default: {default})",
        )


def parse_build_config(argv: Sequence[str]) -> BuildConfig:
    """Parse `demo build` arguments into a `BuildConfig`."""
    parser = argparse.ArgumentParser(
        prog="python -m mrm demo build",
        description="Embed the demo corpus with the demo encoder, simulate annotator labels, meta-train MRM on them "
        "and write the checkpoint, data and card into --out. The same seed reproduces the same files.",
    )
    _add_config_arguments(parser, BuildConfig)
    _add_config_arguments(parser, PopulationConfig)
    args = vars(parser.parse_args(list(argv)))
    population = PopulationConfig(**{f.name: args.pop(f.name) for f in fields(PopulationConfig)})
    return BuildConfig(**args, population=population)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m mrm demo SUBCOMMAND`; `build` is the only subcommand."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: python -m mrm demo build [--out DIR] [--seed N] [--epochs N] [...]\n"
        "  build   embed the demo corpus, simulate annotators, meta-train MRM and write the demo bundle"
    )
    if not argv:
        print(usage, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if argv[0] != "build":
        print(f"unknown demo subcommand {argv[0]!r}; the only one is 'build'", file=sys.stderr)
        return 2

    config = parse_build_config(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from mrm.encoder_base import EncoderLoadError

    try:
        result = build_bundle(config)
    except (CorpusError, ValueError) as error:
        # Bad input, as in the other commands: a corpus error or an invalid setting
        # (ValueError, which meta_train and the simulation raise with the value).
        print(f"demo build failed: {error}", file=sys.stderr)
        return 2
    except EncoderLoadError as error:
        print(f"demo build failed: {error}", file=sys.stderr)
        return 1
    card = result.card
    print(f"wrote the demo bundle to {result.out}")
    for key in ("mrm_adapted", "mrm_meta_init", "global_bt", "noise_ceiling"):
        if key in card:
            values = card[key]
            print(f"  {key:14s} " + "  ".join(f"{k} {100 * values[k]:5.1f}" for k in ("seen", "unseen", "overall", "worst10")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
