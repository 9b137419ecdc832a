"""Preference datasets turned into per-user pair entries ready to embed.

Three sources give the same result, a `PreparedDataset`:

- Reddit TL;DR comparisons (`openai/summarize_from_feedback`, config
  `comparisons`): one user per `worker`, training pairs from the `train`
  split and test pairs from the `validation` split;
- PRISM (`HannahRoseKirk/prism-alignment`): one user per participant, pairs
  from the rated model replies of each conversation turn;
- a pairs file (CSV or JSON Lines, see `mrm.pairs`).

Each entry of `PreparedDataset.users` indexes into
`PreparedDataset.conversations`, the list of unique (prompt, response)
conversations to embed: a conversation that occurs in several pairs is listed
once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mrm.data import split_conversations, user_generator
from mrm.pairs import read_pairs

logger = logging.getLogger(__name__)

REDDIT_REPO = "openai/summarize_from_feedback"
# The repository's main branch contains only a loading script that downloads the
# data from outside the Hub. The Hub's own parquet conversion is on this branch.
REDDIT_PARQUET_REVISION = "refs/convert/parquet"
REDDIT_SPLITS = ("train", "validation")
PRISM_REPO = "HannahRoseKirk/prism-alignment"
PRISM_FILES = ("survey.jsonl", "conversations.jsonl")
PRISM_MIN_CONVERSATIONS = 6
DEFAULT_SPLIT_SEED = 42
PAIRS_DEFAULT_USER = "default"


class DatasetError(ValueError):
    """Raw dataset files that are missing or do not have the expected layout."""


@dataclass
class PreparedDataset:
    """Pair entries per user and the unique conversations they index.

    Attributes:
        name: "reddit", "prism" or "pairs".
        users: `{user_id: [entry, ...]}`; each entry has `chosen_idx` and
            `rejected_idx` (positions in `conversations`), `split` ("train" or
            "val"), `prompt`, `chosen` and `rejected`. Reddit entries add
            `post_id`. PRISM entries add `conversation_id` and the human
            ratings `chosen_score` and `rejected_score`.
        conversations: unique (prompt, response) pairs in order of first use. A
            prompt is a string, or for multi-turn PRISM prompts a list of
            `{"role", "content"}` messages ending with the user's message.
        stats: counts of what was read and dropped, for the log and the report.
    """

    name: str
    users: dict[str, list[dict]]
    conversations: list[tuple[str | list[dict], str]]
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def num_pairs(self) -> int:
        return sum(len(entries) for entries in self.users.values())


def index_conversations(name: str, users: Mapping[str, list[dict]], stats: dict | None = None) -> PreparedDataset:
    """Give each entry `chosen_idx`/`rejected_idx` into a list of unique conversations.

    Entries must have `prompt`, `chosen` and `rejected`. Two entries that share a
    (prompt, response) conversation share its index, so it is embedded once.
    """
    conversations: list[tuple[str | list[dict], str]] = []
    index_of: dict[str, int] = {}

    def index(prompt: str | list[dict], response: str) -> int:
        key = json.dumps([prompt, response], ensure_ascii=False)
        if key not in index_of:
            index_of[key] = len(conversations)
            conversations.append((prompt, response))
        return index_of[key]

    indexed: dict[str, list[dict]] = {}
    for user_id, entries in users.items():
        indexed[user_id] = []
        for entry in entries:
            entry = dict(entry)
            entry["chosen_idx"] = index(entry["prompt"], entry["chosen"])
            entry["rejected_idx"] = index(entry["prompt"], entry["rejected"])
            indexed[user_id].append(entry)
    return PreparedDataset(name=name, users=indexed, conversations=conversations, stats=dict(stats or {}))


def limit_users(users: dict[str, list[dict]], max_users: int | None) -> dict[str, list[dict]]:
    """Keep the first `max_users` users in sorted id order (all when None)."""
    if max_users is None:
        return users
    if max_users < 1:
        raise ValueError(f"max_users must be at least 1, got {max_users}")
    keep = sorted(users)[:max_users]
    return {user_id: users[user_id] for user_id in keep}


# ----------------------------------------------------------------------------- Reddit TL;DR


def download_reddit(revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download the comparisons files of the Reddit TL;DR dataset; return the local folder.

    Honours `HF_HUB_OFFLINE=1` by reading the local Hub cache only.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        folder = snapshot_download(
            REDDIT_REPO,
            repo_type="dataset",
            revision=revision or REDDIT_PARQUET_REVISION,
            allow_patterns=["comparisons/*"],
            cache_dir=cache_dir,
        )
    except (OSError, HfHubHTTPError) as error:
        raise DatasetError(_download_hint(REDDIT_REPO, error, cache_dir)) from error
    return Path(folder)


def _download_hint(repo_id: str, error: Exception, cache_dir: str | os.PathLike | None = None) -> str:
    from huggingface_hub import constants

    from mrm.hub import is_offline

    if is_offline():
        cache = cache_dir if cache_dir is not None else constants.HF_HUB_CACHE
        return (
            f"could not read the dataset {repo_id} from the local Hugging Face Hub cache {cache} "
            f"({type(error).__name__}: {error}). Hub offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), so nothing is downloaded: "
            "run the command once without offline mode to fill the cache, or pass a folder of the downloaded "
            "files with --data_dir."
        )
    return (
        f"could not download the dataset {repo_id} from the Hugging Face Hub ({type(error).__name__}: {error}). "
        "Check the network and HF_TOKEN, or download the files elsewhere and pass their folder with --data_dir."
    )


def find_reddit_files(data_dir: str | os.PathLike) -> list[Path]:
    """List the comparison files (parquet or JSON Lines) under a folder, sorted by path.

    Parquet files are those of the Hub's parquet conversion
    (`comparisons/train/0000.parquet`, `comparisons/validation/0000.parquet`).
    JSON Lines files are the original release (`comparisons/batch*.json`, one
    comparison per line); the row's own `split` field places each row. Files
    below a folder whose name starts with "axis" are skipped, because they
    contain the release's axis evaluations (`axis_evals/`), not comparisons.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"Reddit data folder not found: {data_dir}")
    patterns = ("*.parquet", "*.json", "*.jsonl")
    files = sorted(
        {path for pattern in patterns for path in data_dir.rglob(pattern) if not _in_axis_folder(path.relative_to(data_dir))}
    )
    if not files:
        raise DatasetError(
            f"no comparison files (*.parquet, *.json, *.jsonl) under {data_dir}; "
            f"download them from the Hub dataset {REDDIT_REPO} (branch {REDDIT_PARQUET_REVISION}) "
            "or leave --data_dir unset to download them"
        )
    return files


def _in_axis_folder(relative_path: Path) -> bool:
    return any(folder.lower().startswith("axis") for folder in relative_path.parts[:-1])


def _split_from_path(path: Path) -> str | None:
    """Return "train" or "validation" when a file's path (relative to the data folder) names its split."""
    for part in reversed(path.parts):
        stem = part.split(".")[0].lower()
        tokens = stem.replace("_", "-").split("-")
        if stem == "train" or "train" in tokens:
            return "train"
        if stem in ("validation", "valid", "val") or "validation" in tokens:
            return "validation"
    return None


def _split_from_row(value: object) -> str | None:
    """Map the `split` field of a comparison row ("train", "valid1", "valid2") to a dataset split."""
    text = str(value or "").lower()
    if text == "train":
        return "train"
    if text.startswith("valid"):
        return "validation"
    return None


def _read_comparison_frame(path: Path) -> pd.DataFrame:
    if path.stat().st_size == 0:
        return pd.DataFrame()
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except ImportError as error:
            raise DatasetError(
                f"reading {path} needs a parquet engine: pip install pyarrow ({error})"
            ) from error
    try:
        return pd.read_json(path, lines=True, dtype=False)
    except ValueError as error:
        raise DatasetError(f"{path} is not a JSON Lines file of comparisons: {error}") from error


def iter_reddit_rows(files: Iterable[Path], root: Path) -> Iterator[tuple[str, dict]]:
    """Yield (split, row) for each comparison row, files in the given order, rows in file order.

    A file's split comes from its path below `root` when the path names one,
    otherwise from each row's `split` field.
    """
    for path in files:
        frame = _read_comparison_frame(path)
        if frame.columns.empty:
            raise DatasetError(f"{path} is empty: it contains no comparison rows; delete it or replace it with the full file")
        missing = {"info", "summaries", "choice", "worker"} - set(frame.columns)
        if missing:
            raise DatasetError(f"{path} lacks the comparison column(s) {sorted(missing)}; found {list(frame.columns)}")
        path_split = _split_from_path(path.relative_to(root))
        for row in frame.to_dict("records"):
            split = path_split or _split_from_row(row.get("split"))
            if split is not None:
                yield split, row


def reddit_pair(row: Mapping) -> dict | None:
    """Build {prompt, chosen, rejected} from one comparison row; None when the row has no usable pair."""
    info = row.get("info")
    post = info.get("post") if isinstance(info, Mapping) else None
    summaries = row.get("summaries")
    choice = row.get("choice")
    if not isinstance(post, str) or not post.strip():
        return None
    if summaries is None or len(summaries) != 2 or choice not in (0, 1):
        return None
    return {
        "prompt": post,
        "chosen": summaries[choice]["text"],
        "rejected": summaries[1 - choice]["text"],
    }


def build_reddit_users(rows: Iterable[tuple[str, Mapping]]) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Group comparison rows into users; return (users, stats).

    A user is a `worker` seen in both the train and the validation split (counted
    over all rows, as the published preprocessing does). Each user gets the
    pairs of their train rows (`split: "train"`) followed by those of their
    validation rows (`split: "val"`), each part in file order. Users are
    returned in sorted id order.
    """
    per_split: dict[str, dict[str, list[dict]]] = {"train": {}, "validation": {}}
    stats = {"rows": 0, "rows_without_pair": 0}
    for split, row in rows:
        stats["rows"] += 1
        worker = str(row["worker"])
        pairs = per_split[split].setdefault(worker, [])
        pair = reddit_pair(row)
        if pair is None:
            # NOTE: CNN/DM comparison rows in the validation split have no `post`
            # (their text is `info.article`). They are dropped; the published
            # preprocessing passed their missing post on as the prompt.
            stats["rows_without_pair"] += 1
            continue
        pair["split"] = "train" if split == "train" else "val"
        info = row["info"]
        if isinstance(info, Mapping) and info.get("id") is not None:
            pair["post_id"] = str(info["id"])
        pairs.append(pair)

    common = sorted(set(per_split["train"]) & set(per_split["validation"]))
    stats["workers"] = len(set(per_split["train"]) | set(per_split["validation"]))
    stats["workers_in_both_splits"] = len(common)
    users = {worker: per_split["train"][worker] + per_split["validation"][worker] for worker in common}
    users = {worker: entries for worker, entries in users.items() if entries}
    return users, stats


def load_reddit(
    data_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_users: int | None = None,
) -> PreparedDataset:
    """Prepare Reddit TL;DR users from local files (`data_dir`) or the Hub."""
    folder = Path(data_dir) if data_dir is not None else download_reddit(revision, cache_dir)
    files = find_reddit_files(folder)
    logger.info("reading %d Reddit comparison files from %s", len(files), folder)
    users, stats = build_reddit_users(iter_reddit_rows(files, folder))
    if not users:
        raise DatasetError(f"no worker in {folder} has comparisons in both the train and the validation split")
    users = limit_users(users, max_users)
    return index_conversations("reddit", users, stats)


# ----------------------------------------------------------------------------- PRISM


def download_prism(revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download `survey.jsonl` and `conversations.jsonl` of PRISM; return their folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        paths = [
            hf_hub_download(PRISM_REPO, name, repo_type="dataset", revision=revision, cache_dir=cache_dir)
            for name in PRISM_FILES
        ]
    except (OSError, HfHubHTTPError) as error:
        raise DatasetError(_download_hint(PRISM_REPO, error, cache_dir)) from error
    return Path(paths[0]).parent


def read_jsonl(path: Path, check: Callable[[object], str | None] | None = None) -> list[dict]:
    """Read a JSON Lines file into a list of objects; raise `DatasetError` naming the bad line.

    `check` returns what is wrong with a record, or None when it is valid. The
    first invalid record raises `DatasetError` with that problem and its line.
    """
    if not path.is_file():
        raise DatasetError(f"file not found: {path}")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{path} line {number}: not valid JSON ({error.msg})") from error
            problem = check(record) if check is not None else None
            if problem is not None:
                raise DatasetError(f"{path} line {number}: {problem}; fix or delete that line")
            records.append(record)
    return records


def check_survey_record(record: object) -> str | None:
    """Return what keeps a PRISM survey record from being used, or None when it is valid."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if record.get("user_id") is None:
        return "missing field 'user_id'"
    return None


def check_conversation_record(record: object) -> str | None:
    """Return what keeps a PRISM conversation record from being read, or None when it is valid.

    A conversation needs `user_id` and `conversation_id`. Its
    `conversation_history`, when present, is a list of message objects that
    each have a `turn` that `int()` accepts.
    """
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for name in ("user_id", "conversation_id"):
        if record.get(name) is None:
            return f"missing field {name!r}"
    history = record.get("conversation_history")
    if history is None:
        return None
    if not isinstance(history, list):
        return f"conversation_history must be a list of messages, got {type(history).__name__}"
    for position, message in enumerate(history, start=1):
        if not isinstance(message, dict):
            return f"message {position} of conversation_history is not a JSON object"
        if message.get("turn") is None:
            return f"message {position} of conversation_history is missing field 'turn'"
        try:
            int(message["turn"])
        except (TypeError, ValueError):
            return f"message {position} of conversation_history has turn {message['turn']!r}, not an integer"
    return None


@dataclass
class PrismTurn:
    """The utterances of one conversation turn, in file order."""

    user: list[str] = field(default_factory=list)
    chosen: list[tuple[str, float | None]] = field(default_factory=list)
    rejected: list[tuple[str, float | None]] = field(default_factory=list)

    @property
    def qualifies(self) -> bool:
        """A turn gives pairs when it has a user message, a chosen reply and a rejected reply."""
        return bool(self.user and self.chosen and self.rejected)


def prism_turns(conversation: Mapping) -> list[PrismTurn]:
    """Group a conversation's `conversation_history` by `turn`, in turn order."""
    turns: dict[int, PrismTurn] = {}
    for utterance in conversation.get("conversation_history") or []:
        turn = turns.setdefault(int(utterance["turn"]), PrismTurn())
        content = utterance.get("content")
        if not isinstance(content, str):
            continue
        if utterance.get("role") == "user":
            turn.user.append(content)
        elif utterance.get("if_chosen"):
            turn.chosen.append((content, utterance.get("score")))
        else:
            turn.rejected.append((content, utterance.get("score")))
    return [turns[number] for number in sorted(turns)]


def prism_conversation_pairs(conversation: Mapping) -> list[dict]:
    """Build the pairs of one PRISM conversation.

    Each qualifying turn gives one pair per rejected reply: the turn's chosen
    reply against it, with the participant's ratings as `chosen_score` and
    `rejected_score`. The prompt is the conversation so far as chat messages:
    each earlier qualifying turn as its user message and chosen reply, then this
    turn's user message. Turns that do not qualify are left out of later
    prompts too, as in the published preprocessing. Where a turn has several
    user messages or chosen replies, the first one is used.
    """
    pairs = []
    history: list[dict] = []
    for turn in prism_turns(conversation):
        if not turn.qualifies:
            continue
        user_message = turn.user[0]
        chosen, chosen_score = turn.chosen[0]
        prompt = history + [{"role": "user", "content": user_message}]
        for rejected, rejected_score in turn.rejected:
            pairs.append({
                "prompt": [dict(message) for message in prompt],
                "chosen": chosen,
                "rejected": rejected,
                "chosen_score": chosen_score,
                "rejected_score": rejected_score,
                "conversation_id": str(conversation["conversation_id"]),
            })
        history = prompt + [{"role": "assistant", "content": chosen}]
    return pairs


def build_prism_users(
    survey: Iterable[Mapping], conversations: Iterable[Mapping], seed: int = DEFAULT_SPLIT_SEED
) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Apply the PRISM user and pair rules; return (users, stats).

    Participants come from the survey; those with no completed conversation are
    left out. Conversations without a qualifying turn are dropped, then
    participants with fewer than 6 conversations left. Each remaining
    participant's conversations are split 50/50 by `split_conversations`, and
    every pair takes its conversation's split. Users are returned in survey order.
    """
    participants = [
        str(record["user_id"]) for record in survey if record.get("num_completed_conversations", 1) != 0
    ]
    known = set(participants)
    stats = {"participants": len(participants), "conversations": 0, "conversations_without_pairs": 0,
             "conversations_of_unknown_users": 0, "users_below_minimum": 0}

    # Pairs per conversation, conversations per user in file order.
    per_user: dict[str, list[tuple[str, list[dict]]]] = {user_id: [] for user_id in participants}
    for conversation in conversations:
        stats["conversations"] += 1
        user_id = str(conversation["user_id"])
        if user_id not in known:
            stats["conversations_of_unknown_users"] += 1
            continue
        pairs = prism_conversation_pairs(conversation)
        if not pairs:
            stats["conversations_without_pairs"] += 1
            continue
        per_user[user_id].append((str(conversation["conversation_id"]), pairs))
    if stats["conversations_of_unknown_users"]:
        logger.warning("%d conversations belong to users missing from the survey and were dropped",
                       stats["conversations_of_unknown_users"])

    users: dict[str, list[dict]] = {}
    for user_id, user_conversations in per_user.items():
        if len(user_conversations) < PRISM_MIN_CONVERSATIONS:
            if user_conversations:
                stats["users_below_minimum"] += 1
            continue
        train_ids, _ = split_conversations([cid for cid, _ in user_conversations], user_id, seed)
        entries = []
        for conversation_id, pairs in user_conversations:
            split = "train" if conversation_id in train_ids else "val"
            entries.extend({**pair, "split": split} for pair in pairs)
        users[user_id] = entries
    return users, stats


def load_prism(
    data_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_users: int | None = None,
    seed: int = DEFAULT_SPLIT_SEED,
) -> PreparedDataset:
    """Prepare PRISM users from local files (`data_dir`) or the Hub."""
    folder = Path(data_dir) if data_dir is not None else download_prism(revision, cache_dir)
    survey = read_jsonl(folder / "survey.jsonl", check_survey_record)
    conversations = read_jsonl(folder / "conversations.jsonl", check_conversation_record)
    users, stats = build_prism_users(survey, conversations, seed)
    if not users:
        raise DatasetError(
            f"no PRISM participant in {folder} has {PRISM_MIN_CONVERSATIONS} or more conversations with rated replies"
        )
    users = limit_users(users, max_users)
    return index_conversations("prism", users, stats)


# ----------------------------------------------------------------------------- pairs files


def load_pairs_file(
    path: str | os.PathLike,
    max_users: int | None = None,
    split: str = "train",
    val_fraction: float = 0.0,
    seed: int = DEFAULT_SPLIT_SEED,
) -> PreparedDataset:
    """Prepare users from a pairs file; pairs without `user_id` go to user "default".

    A pair's `split` column ("train" or "val") is kept. The other pairs get
    `split`, except that with `val_fraction > 0` that fraction of each user's
    pairs without a `split` value, rounded and at least one, is held out as
    "val". A user needs two such pairs for this, because one stays "train".
    The held-out pairs are drawn with the per-user generator of
    `mrm.data.user_generator` and `seed`. Invalid records are logged and
    skipped; a file with no valid pair raises `DatasetError` listing the problems.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be at least 0 and below 1, got {val_fraction}")
    if val_fraction > 0 and split != "train":
        raise ValueError(f"val_fraction moves part of the train pairs to val, so split must be 'train', got {split!r}")
    result = read_pairs(path)
    for message in result.warnings:
        logger.warning("%s: %s", path, message)
    for message in result.errors:
        logger.warning("%s: %s", path, message)
    if not result.pairs:
        first_errors = "; ".join(result.errors[:5]) or "no records"
        raise DatasetError(f"no valid pairs in {path}: {first_errors}")

    users: dict[str, list[dict]] = {}
    unassigned: dict[str, list[int]] = {}  # user id -> positions of the entries without a split value
    for pair in result.pairs:
        user_id = pair.get("user_id") or PAIRS_DEFAULT_USER
        entries = users.setdefault(user_id, [])
        entry = {key: pair[key] for key in ("prompt", "chosen", "rejected")}
        if "split" in pair:
            entry["split"] = pair["split"]
        else:
            entry["split"] = split
            unassigned.setdefault(user_id, []).append(len(entries))
        entries.append(entry)
    if val_fraction > 0:
        for user_id, positions in unassigned.items():
            for position in held_out_positions(positions, user_id, val_fraction, seed):
                users[user_id][position]["split"] = "val"
    users = limit_users(users, max_users)
    stats = {
        "records": len(result.pairs) + len(result.errors),
        "invalid_records": len(result.errors),
        "pairs_with_split_value": len(result.pairs) - sum(len(positions) for positions in unassigned.values()),
    }
    return index_conversations("pairs", users, stats)


def held_out_positions(positions: list[int], user_id: str, fraction: float, seed: int) -> list[int]:
    """Draw round(fraction * n) of a user's n positions, at least one and at most n - 1; none when n < 2."""
    if len(positions) < 2:
        return []
    count = min(len(positions) - 1, max(1, round(fraction * len(positions))))
    shuffled = list(positions)
    user_generator(user_id, seed).shuffle(shuffled)
    return sorted(shuffled[:count])
