"""The offline demo bundle: an example corpus, simulated annotators and a demo checkpoint.

`examples/demo_corpus.jsonl` contains short Reddit-style posts written for this
project, each with several faithful TL;DR summaries that differ in four style
attributes (`ATTRIBUTES`, defined in `examples/ATTRIBUTES.md`). A
simulated population of annotators labels pairs of summaries of the same
post: each annotator weighs the attributes differently, and a label is drawn
from a Bradley-Terry model on the attribute difference. The labels depend only
on the recorded attribute values, never on an encoder.

`python -m mrm demo build` (`mrm.demo_build`) embeds the corpus with the demo
encoder, writes the labelled pairs as embedding files, meta-trains MRM on them
with `mrm.meta_train`, and writes the checkpoint and its card into `assets/demo/`.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / "assets" / "demo"
CORPUS_PATH = REPO_ROOT / "examples" / "demo_corpus.jsonl"
PREFS_NAME = "demo_prefs"

# Each attribute is 0 or 1 per summary; 1 is the second value named here.
ATTRIBUTES = ("length", "specificity", "tone", "hedging")
ATTRIBUTE_VALUES = {
    "length": ("short", "long"),
    "specificity": ("vague", "specific"),
    "tone": ("neutral", "casual"),
    "hedging": ("confident", "hedged"),
}

# Preference archetypes: a weight per attribute, in the order of ATTRIBUTES.
# A positive weight prefers the attribute's value 1 (long, specific, casual, hedged).
ARCHETYPES: dict[str, tuple[float, float, float, float]] = {
    "brief": (-1.5, 0.0, -0.3, -1.0),  # short and confident
    "thorough": (1.2, 1.5, -0.3, 0.0),  # long and specific
    "casual": (-0.4, 0.0, 1.5, 0.3),  # casual, emotional tone
    "careful": (0.3, 0.6, -1.2, 1.2),  # neutral and hedged
}


# ----------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Summary:
    """One candidate TL;DR and its style attribute values (0 or 1 each)."""

    text: str
    attributes: dict[str, int]

    def vector(self) -> Tensor:
        """Return the attribute values as a float tensor `[len(ATTRIBUTES)]`."""
        return torch.tensor([float(self.attributes[name]) for name in ATTRIBUTES])


@dataclass(frozen=True)
class Post:
    """A Reddit-style post with its candidate summaries."""

    post_id: str
    subreddit: str
    title: str
    post: str
    summaries: tuple[Summary, ...]

    @property
    def prompt(self) -> str:
        """The post formatted as the embedding prompt; pairs labelled in the app must be embedded with this same prompt."""
        return f"SUBREDDIT: r/{self.subreddit}\nTITLE: {self.title}\nPOST: {self.post}"


class SampledPair(NamedTuple):
    """A post and two different summaries of it, in random order."""

    post: Post
    first: Summary
    second: Summary


class CorpusError(ValueError):
    """A corpus file that cannot be used as it is."""


def load_corpus(path: str | Path | None = None) -> list[Post]:
    """Read and validate a corpus JSONL file (default: `examples/demo_corpus.jsonl`).

    Raises `CorpusError` naming the file and line for a malformed record, a
    post with fewer than two summaries, a missing or non-binary attribute, or
    a duplicate post id.
    """
    path = Path(path) if path is not None else CORPUS_PATH
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path}")
    posts: list[Post] = []
    seen_ids: set[str] = set()
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorpusError(f"{where} is not valid JSON: {error}") from error
        post = _parse_post(record, where)
        if post.post_id in seen_ids:
            raise CorpusError(f"{where}: duplicate post_id {post.post_id!r}; every post needs its own id")
        seen_ids.add(post.post_id)
        posts.append(post)
    if not posts:
        raise CorpusError(f"corpus file {path} contains no posts")
    return posts


def _parse_post(record: object, where: str) -> Post:
    if not isinstance(record, dict):
        raise CorpusError(f"{where}: expected a JSON object, found {type(record).__name__}")
    missing = [key for key in ("post_id", "subreddit", "title", "post", "summaries") if key not in record]
    if missing:
        raise CorpusError(f"{where}: missing keys {missing}")
    raw_summaries = record["summaries"]
    if not isinstance(raw_summaries, list) or len(raw_summaries) < 2:
        raise CorpusError(f"{where}: post {record['post_id']!r} needs a list of at least two summaries")

    summaries = []
    for position, raw in enumerate(raw_summaries):
        attributes = raw.get("attributes") if isinstance(raw, dict) else None
        if not isinstance(raw, dict) or not isinstance(raw.get("text"), str) or not isinstance(attributes, dict):
            raise CorpusError(f"{where}: summary {position} needs a 'text' string and an 'attributes' object")
        bad = {name: attributes.get(name) for name in ATTRIBUTES if attributes.get(name) not in (0, 1)}
        if bad:
            raise CorpusError(
                f"{where}: summary {position} has missing or non-binary attributes {bad}; each of {ATTRIBUTES} must be 0 or 1"
            )
        summaries.append(Summary(text=raw["text"], attributes={name: int(attributes[name]) for name in ATTRIBUTES}))
    return Post(
        post_id=str(record["post_id"]),
        subreddit=str(record["subreddit"]),
        title=str(record["title"]),
        post=str(record["post"]),
        summaries=tuple(summaries),
    )


def sample_pair(rng: random.Random | int | None = None, posts: Sequence[Post] | None = None) -> SampledPair:
    """Draw a post and two different summaries of it (default corpus: `load_corpus()`).

    `rng` is a `random.Random` or a seed; None draws from a fresh unseeded generator.
    """
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    posts = load_corpus() if posts is None else posts
    if not posts:
        raise ValueError("no posts to sample from")
    post = rng.choice(list(posts))
    first, second = rng.sample(range(len(post.summaries)), 2)
    return SampledPair(post, post.summaries[first], post.summaries[second])


def summary_rows(posts: Sequence[Post]) -> list[tuple[Post, Summary]]:
    """List every (post, summary) in corpus order; position i is row i of the embedding tensor."""
    return [(post, summary) for post in posts for summary in post.summaries]


# ----------------------------------------------------------------------------- simulated annotators


@dataclass
class PopulationConfig:
    """Settings of the simulated annotator population and of the pairs each annotator labels."""

    num_annotators: int = field(default=80, metadata={"help": "number of simulated annotators"})
    train_pairs: int = field(default=30, metadata={"help": "labelled training pairs per annotator"})
    val_pairs: int = field(default=15, metadata={"help": "labelled test ('val') pairs per annotator"})
    val_post_fraction: float = field(
        default=1 / 3, metadata={"help": "share of posts held out per annotator for test pairs; training pairs never use them"}
    )
    beta: float = field(default=3.0, metadata={"help": "Bradley-Terry rationality: larger means less label noise"})
    weight_noise: float = field(default=0.4, metadata={"help": "std of the Gaussian noise added to each archetype weight"})


@dataclass(frozen=True)
class Annotator:
    """A simulated annotator: an id, the archetype drawn, and one weight per attribute."""

    annotator_id: str
    archetype: str
    weights: tuple[float, ...]

    def weight_tensor(self) -> Tensor:
        return torch.tensor(self.weights, dtype=torch.float64)


def preference_probability(weights: Tensor, attributes_a: Tensor, attributes_b: Tensor, beta: float) -> Tensor:
    """Bradley-Terry probability that summary a is preferred: `sigmoid(beta * w . (attr_a - attr_b))`.

    Shapes broadcast: `weights [..., A]`, attributes `[..., A]`; returns `[...]`.
    """
    margin = (weights * (attributes_a - attributes_b)).sum(dim=-1)
    return torch.sigmoid(beta * margin)


def make_annotators(config: PopulationConfig, seed: int) -> list[Annotator]:
    """Draw the annotators: archetypes in turn, each weight plus Gaussian noise; deterministic for a seed."""
    rng = random.Random(seed)
    names = list(ARCHETYPES)
    width = len(str(config.num_annotators - 1))
    annotators = []
    for index in range(config.num_annotators):
        archetype = names[index % len(names)]
        weights = tuple(round(w + rng.gauss(0.0, config.weight_noise), 4) for w in ARCHETYPES[archetype])
        annotators.append(Annotator(f"annotator_{index:0{width}d}", archetype, weights))
    return annotators


def simulate_labels(
    posts: Sequence[Post], annotators: Sequence[Annotator], config: PopulationConfig, seed: int
) -> dict[str, list[dict]]:
    """Label summary pairs for every annotator, as embedding-file metadata `{user_id: [entry, ...]}`.

    Each annotator holds out `val_post_fraction` of the posts for test ("val")
    pairs, so a test pair never shares a post with that annotator's training
    pairs. Row indices follow `summary_rows(posts)`.
    """
    _check_population(posts, config)
    row_offsets, offset = [], 0
    for post in posts:
        row_offsets.append(offset)
        offset += len(post.summaries)

    users: dict[str, list[dict]] = {}
    for index, annotator in enumerate(annotators):
        rng = random.Random(seed * 1_000_003 + index)
        order = list(range(len(posts)))
        rng.shuffle(order)
        num_val_posts = max(1, round(len(posts) * config.val_post_fraction))
        val_posts, train_posts = order[:num_val_posts], order[num_val_posts:]

        entries = []
        for split, post_indices, count in (("train", train_posts, config.train_pairs), ("val", val_posts, config.val_pairs)):
            candidates = [(p, a, b) for p in sorted(post_indices) for a, b in _index_pairs(len(posts[p].summaries))]
            if count > len(candidates):
                raise ValueError(
                    f"{count} {split} pairs requested per annotator but only {len(candidates)} distinct pairs exist "
                    f"on {len(post_indices)} posts; lower the pair count or val_post_fraction"
                )
            for p, a, b in rng.sample(candidates, count):
                entries.append(_label_pair(posts[p], row_offsets[p], a, b, annotator, config.beta, rng, split))
        users[annotator.annotator_id] = entries
    return users


def _index_pairs(n: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(n) for b in range(a + 1, n)]


def _label_pair(
    post: Post, row_offset: int, a: int, b: int, annotator: Annotator, beta: float, rng: random.Random, split: str
) -> dict:
    # Show the two summaries in random order, then draw the label from Bradley-Terry.
    if rng.random() < 0.5:
        a, b = b, a
    summary_a, summary_b = post.summaries[a], post.summaries[b]
    p_a = float(preference_probability(annotator.weight_tensor(), summary_a.vector().double(), summary_b.vector().double(), beta))
    chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
    return {
        "chosen_idx": row_offset + chosen,
        "rejected_idx": row_offset + rejected,
        "split": split,
        "prompt": post.prompt,
        "chosen": post.summaries[chosen].text,
        "rejected": post.summaries[rejected].text,
        "conversation_id": post.post_id,
    }


def _check_population(posts: Sequence[Post], config: PopulationConfig) -> None:
    if config.num_annotators < 2:
        raise ValueError(f"num_annotators={config.num_annotators}: at least two are needed for a seen/unseen split")
    if config.train_pairs < 1 or config.val_pairs < 1:
        raise ValueError(f"train_pairs={config.train_pairs} and val_pairs={config.val_pairs} must be at least 1")
    if not 0 < config.val_post_fraction < 1:
        raise ValueError(f"val_post_fraction={config.val_post_fraction} must lie strictly between 0 and 1")
    if len(posts) < 2:
        raise ValueError(f"the corpus contains {len(posts)} posts; at least two are needed to hold some out for test pairs")


def noise_ceiling(
    posts: Sequence[Post], annotators: Sequence[Annotator], users: dict[str, list[dict]], split: str = "val"
) -> dict[str, float]:
    """Accuracy of each annotator's own weights on their labelled pairs of `split`.

    This is what a model that knew every annotator's true preference would
    score: labels drawn against the more likely side are its only errors.
    """
    attributes = torch.stack([summary.vector() for _, summary in summary_rows(posts)]).double()  # (N, A)
    accuracy = {}
    for annotator in annotators:
        entries = [e for e in users[annotator.annotator_id] if e["split"] == split]
        chosen = torch.tensor([e["chosen_idx"] for e in entries])
        rejected = torch.tensor([e["rejected_idx"] for e in entries])
        margins = (attributes[chosen] - attributes[rejected]) @ annotator.weight_tensor()
        accuracy[annotator.annotator_id] = float((margins > 0).double().mean())
    return accuracy


# Numbers of labelled pairs for the card's "accuracy after n labels" figures.
LABEL_COUNTS = (1, 3, 5, 10, 20)

# A reader who prefers specific, confident summaries: the taste of examples/labelled_pairs.*.
EXAMPLE_READER_WEIGHTS = (0.0, 1.5, 0.0, -1.0)


def example_pairs(posts: Sequence[Post], weights: Sequence[float] = EXAMPLE_READER_WEIGHTS, num_pairs: int = 12) -> list[dict]:
    """Label one pair on each of `num_pairs` evenly spaced posts, noise-free, in the upload format.

    On each post the pair with the largest preference margin under `weights`
    is taken (the first one on a tie), so the labels show one clear taste.
    Returns dicts with `prompt`, `chosen` and `rejected`.
    """
    if not 1 <= num_pairs <= len(posts):
        raise ValueError(f"num_pairs={num_pairs} must lie between 1 and the number of posts ({len(posts)})")
    weight_tensor = torch.tensor(list(weights), dtype=torch.float64)
    step = len(posts) / num_pairs
    pairs = []
    for position in range(num_pairs):
        post = posts[int(position * step)]
        scores = [float(summary.vector().double() @ weight_tensor) for summary in post.summaries]
        a, b = max(_index_pairs(len(scores)), key=lambda ab: abs(scores[ab[0]] - scores[ab[1]]))
        chosen, rejected = (a, b) if scores[a] > scores[b] else (b, a)
        pairs.append({"prompt": post.prompt, "chosen": post.summaries[chosen].text, "rejected": post.summaries[rejected].text})
    return pairs
