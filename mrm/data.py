"""Embedding files and the seen/unseen user splits.

An embedding dataset is two files that existing MRM users already have:

- `NAME.pt`: one tensor `[N, hidden]` (bf16 or fp32), one row per response;
- `NAME.json`: `{user_id: [entry, ...]}`. An entry has `chosen_idx` and
  `rejected_idx` (rows of the tensor) and `split` ("train" or "val"). It may
  also have `prompt`, `chosen`, `rejected`, `chosen_score`, `rejected_score`
  and `conversation_id`.

`build_user_splits` turns them into seen and unseen users with the same
random choices as the published MRM code (see `split_seen_unseen` and
`select_train_pairs`), so a published checkpoint meets the users it was
trained and evaluated on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from mrm.fileio import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")


class DataError(ValueError):
    """An embedding or metadata file that cannot be used as it is."""


@dataclass
class EmbeddingData:
    """An embedding tensor and the per-user pair entries that index into it."""

    embeddings: Tensor  # [N, H]
    users: dict[str, list[dict]]

    @property
    def hidden_size(self) -> int:
        return self.embeddings.shape[1]


@dataclass
class UserPairs:
    """One user's pairs as row indices into the embedding tensor.

    `train_*` are the (capped, shuffled) training pairs used for adaptation;
    `test_*` the held-out pairs, in file order. `train_groups` gives each
    training pair's group id for the support/query split: the pair's own
    position for Reddit, its conversation for PRISM.
    """

    user_id: str
    seen: bool
    train_chosen: Tensor  # [P] int64
    train_rejected: Tensor  # [P] int64
    test_chosen: Tensor  # [Q] int64
    test_rejected: Tensor  # [Q] int64
    train_groups: list = field(default_factory=list)

    @property
    def num_train(self) -> int:
        return self.train_chosen.numel()

    @property
    def num_test(self) -> int:
        return self.test_chosen.numel()


@dataclass
class UserSplits:
    seen: list[UserPairs]
    unseen: list[UserPairs]
    skipped: dict[str, str]  # user id -> reason

    @property
    def all_users(self) -> list[UserPairs]:
        return self.seen + self.unseen


# ----------------------------------------------------------------------------- file I/O


def read_embedding_files(embed_pt: str | os.PathLike, meta_json: str | os.PathLike, mmap: bool = True) -> EmbeddingData:
    """Read and validate an `NAME.pt` + `NAME.json` pair.

    The tensor is memory-mapped when possible, so a multi-GB file costs no
    extra RAM until rows are used. Raises `DataError` naming the file and the
    problem for an empty or unreadable file, a malformed JSON, a bad entry or
    an index out of range.
    """
    embed_pt, meta_json = Path(embed_pt), Path(meta_json)
    embeddings = _read_tensor(embed_pt, mmap)
    users = _read_metadata(meta_json)
    validate_entries(users, num_rows=embeddings.shape[0], source=str(meta_json))
    return EmbeddingData(embeddings=embeddings, users=users)


def _read_tensor(path: Path, mmap: bool) -> Tensor:
    if not path.is_file():
        raise DataError(f"embedding file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"embedding file {path} is empty; re-create it with `python -m mrm embed`")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises several types for corrupt files
        if mmap:
            return _read_tensor(path, mmap=False)
        raise DataError(f"could not read {path} as a torch tensor file: {error}") from error
    if isinstance(obj, Mapping) and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not isinstance(obj, Tensor) or obj.ndim != 2:
        kind = f"tensor of shape {tuple(obj.shape)}" if isinstance(obj, Tensor) else type(obj).__name__
        raise DataError(f"{path} contains a {kind}; expected one 2-D tensor [rows, hidden]")
    if obj.shape[0] == 0 or obj.shape[1] == 0:
        raise DataError(f"{path} contains an empty tensor of shape {tuple(obj.shape)}; re-create it with `python -m mrm embed`")
    if not obj.is_floating_point():
        raise DataError(f"{path} contains a {obj.dtype} tensor; expected floating point embeddings")
    return obj


def _read_metadata(path: Path) -> dict[str, list[dict]]:
    if not path.is_file():
        raise DataError(f"metadata file not found: {path}")
    text = path.read_bytes()
    if not text.strip():
        raise DataError(f"metadata file {path} is empty; expected a JSON object {{user_id: [entry, ...]}}")
    try:
        users = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"metadata file {path} is not valid JSON: {error}") from error
    if not isinstance(users, dict) or not all(isinstance(v, list) for v in users.values()):
        raise DataError(f"metadata file {path} must be a JSON object mapping each user id to a list of entries")
    if not users:
        raise DataError(f"metadata file {path} lists no users")
    return {str(user_id): entries for user_id, entries in users.items()}


def validate_entries(users: Mapping[str, list], num_rows: int, source: str = "metadata") -> None:
    """Check every entry's fields and row indices; raise one `DataError` listing the first problems."""
    problems = []
    for user_id, entries in users.items():
        for position, entry in enumerate(entries):
            where = f"user {user_id!r} entry {position}"
            if not isinstance(entry, dict):
                problems.append(f"{where}: not an object")
                continue
            for key in ("chosen_idx", "rejected_idx"):
                value = entry.get(key)
                if isinstance(value, bool) or not isinstance(value, int):
                    problems.append(f"{where}: {key}={value!r} is not an integer row index")
                elif not 0 <= value < num_rows:
                    problems.append(f"{where}: {key}={value} is out of range for an embedding tensor of {num_rows} rows")
            if "split" not in entry and "conversation_id" in entry:
                continue  # published PRISM files: the split is drawn per conversation at load time
            if entry.get("split") not in SPLITS:
                problems.append(f"{where}: split={entry.get('split')!r}, expected 'train' or 'val'")
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DataError(f"{source} has invalid entries: {shown}{more}. Check that the .json matches the .pt file.")


def write_embedding_files(prefix: str | os.PathLike, embeddings: Tensor, users: Mapping[str, list[dict]]) -> tuple[Path, Path]:
    """Write `PREFIX.pt` and `PREFIX.json` atomically and return their paths."""
    prefix = Path(prefix)
    validate_entries(users, num_rows=embeddings.shape[0], source=f"{prefix}.json")
    pt_path, json_path = prefix.with_name(prefix.name + ".pt"), prefix.with_name(prefix.name + ".json")
    # Saved through a file handle: torch.save records a path's name in the archive,
    # which would make identical tensors give different bytes.
    with atomic_path(pt_path) as tmp, open(tmp, "wb") as handle:
        torch.save(embeddings.detach().cpu().contiguous(), handle)
    write_json_atomic(json_path, dict(users), indent=None)
    return pt_path, json_path


def encoder_record_path(embed_pt: str | os.PathLike) -> Path:
    """Return the file beside `NAME.pt` that records the encoder of its embeddings: `NAME.encoder.json`."""
    path = Path(embed_pt)
    stem = path.name[: -len(".pt")] if path.name.endswith(".pt") else path.name
    return path.with_name(stem + ".encoder.json")


def write_encoder_record(embed_pt: str | os.PathLike, encoder_id: str, encoder_revision: str | None, hidden_size: int) -> Path:
    """Record which encoder made the embeddings in `embed_pt` (the published format itself has no field for it)."""
    path = encoder_record_path(embed_pt)
    write_json_atomic(path, {"encoder_id": encoder_id, "encoder_revision": encoder_revision, "hidden_size": hidden_size})
    return path


def read_encoder_record(embed_pt: str | os.PathLike) -> dict | None:
    """Return the encoder record beside `embed_pt`, or None when there is none (published files have none)."""
    path = encoder_record_path(embed_pt)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("ignoring the encoder record %s: %s", path, error)
        return None
    if not isinstance(record, dict) or not isinstance(record.get("encoder_id"), str):
        logger.warning("ignoring the encoder record %s: it has no encoder_id", path)
        return None
    return record


# ----------------------------------------------------------------------------- splits


def split_seen_unseen(user_ids: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """Split users into seen (meta-training) and unseen halves.

    Same rule as the published code: sort the ids, shuffle them with
    `random.Random(seed)`, the first `len // 2` are seen.
    """
    ids = sorted(user_ids)
    random.Random(seed).shuffle(ids)
    half = len(ids) // 2
    return ids[:half], ids[half:]


def user_generator(user_id: str, seed: int) -> random.Random:
    """Per-user generator of the published code: seed + md5(user id) mod 2**32."""
    digest = int(hashlib.md5(str(user_id).encode("utf-8")).hexdigest(), 16)
    return random.Random(seed + digest % 2**32)


def select_train_pairs(entries: list[dict], user_id: str, seed: int, limit: int) -> list[dict]:
    """Shuffle a user's training entries (file order) with the per-user generator and keep the first `limit`.

    A `limit` of -1 keeps them all (still shuffled).
    """
    entries = list(entries)
    user_generator(user_id, seed).shuffle(entries)
    return entries if limit < 0 else entries[:limit]


def split_conversations(conversation_ids: Sequence[str], user_id: str, seed: int) -> tuple[set[str], set[str]]:
    """Split one user's conversations 50/50 into (train, val) ids.

    The ids, in file order, are shuffled with the per-user generator
    (`user_generator`). The first `len // 2` are training conversations and
    the rest are test conversations, so an odd count puts the extra one in
    the test half. Published PRISM embedding files carry no `split` field and get
    their split from this rule at load time.
    """
    ids = list(conversation_ids)
    user_generator(user_id, seed).shuffle(ids)
    half = len(ids) // 2
    return set(ids[:half]), set(ids[half:])


def prism_train_pairs(entries: list[dict], user_id: str, seed: int, limit: int) -> tuple[list[dict], list[int]]:
    """Return a PRISM user's training pairs and the conversation group of each, in the published order.

    The published code (`build_prism_dataset` in the ModalityDance/MRM
    repository's utils.py) shuffles the user's conversation ids, in order of
    first appearance, with the per-user generator, keeps the training ones in
    that order, caps their number (not the number of pairs) at `limit` when
    `limit` > 0, and lists each conversation's pairs in file order. Groups are
    numbered by that conversation order, which the per-epoch support/query
    shuffle then permutes.
    """
    # An entry without a conversation id is a conversation of its own.
    keys = [("conversation", str(e["conversation_id"])) if "conversation_id" in e else ("entry", i) for i, e in enumerate(entries)]
    conversations = list(dict.fromkeys(keys))
    user_generator(user_id, seed).shuffle(conversations)
    train_pairs_by_conversation: dict[tuple, list[dict]] = {}
    for key, entry in zip(keys, entries):
        if entry["split"] == "train":
            train_pairs_by_conversation.setdefault(key, []).append(entry)
    ordered = [conv for conv in conversations if conv in train_pairs_by_conversation]
    if limit > 0:
        ordered = ordered[:limit]

    train, groups = [], []
    for group, conv in enumerate(ordered):
        train += train_pairs_by_conversation[conv]
        groups += [group] * len(train_pairs_by_conversation[conv])
    return train, groups


def passes_score_threshold(entry: dict, threshold: float | None) -> bool:
    """Keep a PRISM training pair when |chosen_score - rejected_score| > `threshold` (None keeps every pair).

    This is the published filter. The published scripts pass -1, which keeps
    every pair; test pairs are never filtered. With a threshold of 0 or more,
    a pair that lacks a numeric score (an unrated reply) is dropped.
    """
    if threshold is None or threshold < 0:  # every gap, even an unknown one, is above a negative threshold
        return True
    chosen, rejected = entry.get("chosen_score"), entry.get("rejected_score")
    if not all(isinstance(score, (int, float)) and not isinstance(score, bool) for score in (chosen, rejected)):
        return False  # a pair without two ratings cannot show a gap above the threshold
    return abs(chosen - rejected) > threshold


def _renumber_groups(groups: list[int]) -> list[int]:
    # Keeps the order of the groups that still have pairs and numbers them 0..n-1.
    position = {group: i for i, group in enumerate(dict.fromkeys(groups))}
    return [position[group] for group in groups]


def assign_missing_splits(entries: list[dict], user_id: str, seed: int, dataset: str) -> list[dict]:
    """Return `entries` with a `split` on each; PRISM entries without one get it from `split_conversations`."""
    if all("split" in entry for entry in entries):
        return entries
    if dataset != "PRISM":
        raise DataError(f"user {user_id!r} has entries without a 'split' field; only PRISM files may omit it (use --dataset PRISM)")
    conversations = list(dict.fromkeys(str(e["conversation_id"]) for e in entries if "split" not in e))
    train_ids, _ = split_conversations(conversations, user_id, seed)
    return [
        entry if "split" in entry else {**entry, "split": "train" if str(entry["conversation_id"]) in train_ids else "val"}
        for entry in entries
    ]


def support_query_split(num_groups: int, seed: int, user_index: int, epoch: int, val_ratio: float) -> tuple[list[int], list[int]]:
    """Split group positions `0..num_groups-1` into (support, query) for one epoch (epochs count from 1).

    Published rule: shuffle with `random.Random(seed + user_index + 1000 * epoch)`;
    the first `max(1, int(n * val_ratio))` positions are the query set, the rest
    the support set; with a single group both sets are that group.
    """
    ids = list(range(num_groups))
    if num_groups == 1:
        return ids, ids
    random.Random(seed + user_index + 1000 * epoch).shuffle(ids)
    num_query = max(1, int(num_groups * val_ratio))
    query, support = ids[:num_query], ids[num_query:]
    if not support:  # only reachable with val_ratio >= 1: keep at least one support group
        support = query[-1:]
        query = query[:-1] or support
    return support, query


def build_user_splits(
    data: EmbeddingData,
    seed: int = 42,
    dataset: str = "REDDIT",
    seen_train_limit: int = -1,
    unseen_train_limit: int = -1,
    score_threshold: float | None = None,
) -> UserSplits:
    """Build seen and unseen users with their capped training pairs and test pairs.

    Users are split over every id in the metadata, so the assignment matches
    the published code. Users left with no training or no test pairs are then
    skipped and listed in `UserSplits.skipped`. Pairs whose embedding rows
    contain NaN or inf are dropped with a warning.
    """
    dataset = dataset.upper()
    if dataset not in ("REDDIT", "PRISM"):
        raise DataError(f"unknown dataset {dataset!r}; expected REDDIT or PRISM")
    seen_ids, unseen_ids = split_seen_unseen(list(data.users), seed)
    if dataset == "REDDIT" and score_threshold is not None and score_threshold >= 0:
        logger.warning("--score_threshold %s is ignored for REDDIT: as in the published code, it filters PRISM "
                       "training pairs only", score_threshold)

    def build(bad_rows: set[int]) -> tuple[dict[bool, list[UserPairs]], dict[str, str]]:
        skipped: dict[str, str] = {}
        result: dict[bool, list[UserPairs]] = {True: [], False: []}
        for is_seen, ids in ((True, seen_ids), (False, unseen_ids)):
            limit = seen_train_limit if is_seen else unseen_train_limit
            for user_id in ids:
                entries = assign_missing_splits(data.users[user_id], user_id, seed, dataset)
                user = _build_user(entries, user_id, is_seen, seed, dataset, limit, score_threshold, bad_rows)
                if isinstance(user, str):
                    skipped[user_id] = user
                else:
                    result[is_seen].append(user)
        return result, skipped

    # Only rows that the selected pairs use are scanned for NaN or inf, so rows
    # beyond the training caps are never read from a memory-mapped file.
    result, skipped = build(set())
    used_rows = torch.unique(torch.cat([
        torch.cat([u.train_chosen, u.train_rejected, u.test_chosen, u.test_rejected]) for u in result[True] + result[False]
    ] or [torch.empty(0, dtype=torch.long)]))
    bad_rows = find_nonfinite_rows(data.embeddings, used_rows)
    if bad_rows:
        logger.warning("%d embedding rows contain NaN or inf; pairs using them are dropped", len(bad_rows))
        result, skipped = build(bad_rows)

    if skipped:
        listed = ", ".join(f"{uid} ({why})" for uid, why in list(skipped.items())[:10])
        logger.warning("skipped %d users: %s%s", len(skipped), listed, " ..." if len(skipped) > 10 else "")
    if not result[True]:
        reasons = f"; skipped: {skipped}" if skipped else ""
        raise DataError(
            f"no usable seen users out of {len(data.users)} users{reasons}. Users are split in half into seen and "
            "unseen ones, so training and evaluation need at least 2 users, each with training and test (val) pairs."
        )
    return UserSplits(seen=result[True], unseen=result[False], skipped=skipped)


def _build_user(entries, user_id, is_seen, seed, dataset, limit, score_threshold, bad_rows) -> UserPairs | str:
    def finite(entry: dict) -> bool:
        return entry["chosen_idx"] not in bad_rows and entry["rejected_idx"] not in bad_rows

    # Pairs are filtered after the cap, as in the published code, so a dropped
    # pair never changes which of the user's other pairs are selected.
    if dataset == "PRISM":
        train, groups = prism_train_pairs(entries, user_id, seed, limit)
        kept_positions = [i for i, e in enumerate(train) if finite(e) and passes_score_threshold(e, score_threshold)]
        train = [train[i] for i in kept_positions]
        groups = _renumber_groups([groups[i] for i in kept_positions])
    else:
        train = select_train_pairs([e for e in entries if e["split"] == "train"], user_id, seed, limit)
        train = [e for e in train if finite(e)]
        groups = list(range(len(train)))
    test = [e for e in entries if e["split"] == "val" and finite(e)]
    if not train:
        return "no training pairs"
    if not test:
        return "no test pairs"

    def indices(items: list[dict], key: str) -> Tensor:
        return torch.tensor([e[key] for e in items], dtype=torch.long)

    return UserPairs(
        user_id=user_id,
        seen=is_seen,
        train_chosen=indices(train, "chosen_idx"),
        train_rejected=indices(train, "rejected_idx"),
        test_chosen=indices(test, "chosen_idx"),
        test_rejected=indices(test, "rejected_idx"),
        train_groups=groups,
    )


def find_nonfinite_rows(embeddings: Tensor, rows: Tensor | None = None, chunk_rows: int = 1024) -> set[int]:
    """Return the indices (among `rows`, default all) of rows holding NaN or inf, scanning in chunks to bound memory."""
    rows = torch.arange(embeddings.shape[0]) if rows is None else rows
    bad: set[int] = set()
    for start in range(0, rows.numel(), chunk_rows):
        indices = rows[start : start + chunk_rows]
        nonfinite = (~torch.isfinite(embeddings[indices])).any(dim=1)
        bad.update(indices[nonfinite].tolist())
    return bad


def num_groups(user: UserPairs) -> int:
    return max(user.train_groups) + 1 if user.train_groups else 0


def pairs_in_groups(user: UserPairs, group_ids: Sequence[int]) -> Tensor:
    """Positions of the user's training pairs whose group is in `group_ids`, as an int64 tensor."""
    wanted = set(group_ids)
    return torch.tensor([i for i, g in enumerate(user.train_groups) if g in wanted], dtype=torch.long)


def holdout_split(user: UserPairs, fraction: float = 0.2) -> tuple[Tensor, Tensor]:
    """Split a user's training pairs into (adapt, held-out) positions for model selection.

    The held-out part never includes test pairs. Deterministic per user id;
    users with fewer than two training groups get an empty held-out part.
    """
    groups = num_groups(user)
    if groups < 2:
        return torch.arange(user.num_train), torch.empty(0, dtype=torch.long)
    order = list(range(groups))
    user_generator(user.user_id, seed=7919).shuffle(order)
    num_held = max(1, math.floor(groups * fraction))
    held_groups = order[:num_held]
    return pairs_in_groups(user, order[num_held:]), pairs_in_groups(user, held_groups)
