"""User-level evaluation: adapt each user on their training pairs, score their test pairs.

All users are processed at once. Base rewards are computed once for every
embedding row the users touch (in chunks, to bound memory), then adaptation
runs on `[users, pairs, K]` margins, as in `mrm.adapt`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mrm.adapt import inner_loop, margins_from_logits, remap_rows, stack_margin_bases
from mrm.data import UserPairs, holdout_split
from mrm.fileio import atomic_path
from mrm.model import MRM
from mrm.objectives import pair_accuracy

WORST_FRACTION = 0.10


@dataclass
class PairSets:
    """Row indices of the pairs one user adapts on and is scored on."""

    adapt_chosen: Tensor
    adapt_rejected: Tensor
    test_chosen: Tensor
    test_rejected: Tensor


@dataclass
class UserScores:
    """Per-user accuracies before and after adaptation, in the order users were given."""

    before: Tensor  # [U]
    after: Tensor  # [U]
    logits: Tensor  # [U, K] adapted mixture logits


def test_pair_sets(users: list[UserPairs]) -> list[PairSets]:
    """The published protocol: adapt on all (capped) training pairs, score the test pairs."""
    return [PairSets(u.train_chosen, u.train_rejected, u.test_chosen, u.test_rejected) for u in users]


def holdout_pair_sets(users: list[UserPairs]) -> list[PairSets]:
    """Model-selection sets that never touch test pairs: adapt on part of the training pairs, score the rest.

    Users with a single training group have nothing to hold out and are left out.
    """
    sets = []
    for user in users:
        adapt_positions, held_positions = holdout_split(user)
        if held_positions.numel() == 0:
            continue
        sets.append(PairSets(
            user.train_chosen[adapt_positions], user.train_rejected[adapt_positions],
            user.train_chosen[held_positions], user.train_rejected[held_positions],
        ))
    return sets


@torch.no_grad()
def base_rewards_for_rows(model: MRM, embeddings: Tensor, rows: Tensor, chunk_rows: int = 512) -> Tensor:
    """Base rewards `[len(rows), K]` of the given embedding rows, converting at most `chunk_rows` rows to fp32 at a time."""
    device = model.shared_weight.device
    out = torch.empty(rows.numel(), model.num_bases, device=device)
    for start in range(0, rows.numel(), chunk_rows):
        chunk = embeddings[rows[start : start + chunk_rows]].to(device, non_blocking=True)
        out[start : start + chunk_rows] = model.base_rewards(chunk)
    return out


def score_users(
    model: MRM,
    embeddings: Tensor,
    pair_sets: list[PairSets],
    inner_lr: float,
    steps: int,
    init_logits: Tensor | None = None,
) -> UserScores:
    """Accuracy of every user before and after `steps` Adam steps at `inner_lr`, vectorized over users."""
    if not pair_sets:
        empty = torch.empty(0)
        return UserScores(empty, empty, torch.empty(0, model.num_bases))
    device = model.shared_weight.device
    start = (model.shared_weight if init_logits is None else init_logits).detach().to(device)

    # Base rewards once per distinct row, then gathered per pair.
    adapt_pairs = [(s.adapt_chosen, s.adapt_rejected) for s in pair_sets]
    test_pairs = [(s.test_chosen, s.test_rejected) for s in pair_sets]
    rows, (adapt_pairs, test_pairs) = remap_rows([adapt_pairs, test_pairs])
    table = base_rewards_for_rows(model, embeddings, rows)  # (R, K)
    adapt_bases, adapt_mask = stack_margin_bases(table, adapt_pairs)  # (U, P, K), (U, P)
    test_bases, test_mask = stack_margin_bases(table, test_pairs)

    adapted = inner_loop(adapt_bases, adapt_mask, start, steps, inner_lr).logits  # (U, K)
    num_users = len(pair_sets)
    before = pair_accuracy(margins_from_logits(test_bases, start.expand(num_users, -1)), test_mask)
    after = pair_accuracy(margins_from_logits(test_bases, adapted), test_mask)
    return UserScores(before.cpu(), after.cpu(), adapted.cpu())


def summarize(seen: Tensor, unseen: Tensor) -> dict[str, float]:
    """Seen, unseen and overall mean user accuracy, the worst 10% of users' mean, and the std across users."""
    everyone = torch.cat([seen, unseen])

    def mean(values: Tensor) -> float:
        return float(values.mean()) if values.numel() else float("nan")

    worst_count = max(1, math.ceil(WORST_FRACTION * everyone.numel())) if everyone.numel() else 0
    worst = torch.sort(everyone).values[:worst_count]
    return {
        "seen": mean(seen),
        "unseen": mean(unseen),
        "overall": mean(everyone),
        "worst10": mean(worst),
        "std": float(everyone.std(unbiased=False)) if everyone.numel() else float("nan"),
        "num_seen": int(seen.numel()),
        "num_unseen": int(unseen.numel()),
    }


@dataclass
class EvaluationReport:
    """Summary figures after and before adaptation, plus one row per user."""

    adapted: dict[str, float]
    init: dict[str, float]
    per_user: list[dict]

    def to_results(self) -> dict:
        return {**self.adapted, "init": self.init, "gain_overall": self.adapted["overall"] - self.init["overall"]}


def evaluate(model: MRM, embeddings: Tensor, seen: list[UserPairs], unseen: list[UserPairs], inner_lr: float, steps: int) -> EvaluationReport:
    """Run the published user-level protocol on seen and unseen users."""
    users = seen + unseen
    scores = score_users(model, embeddings, test_pair_sets(users), inner_lr, steps)
    num_seen = len(seen)
    adapted = summarize(scores.after[:num_seen], scores.after[num_seen:])
    init = summarize(scores.before[:num_seen], scores.before[num_seen:])
    per_user = [
        {
            "user_id": user.user_id,
            "split": "seen" if user.seen else "unseen",
            "train_pairs": user.num_train,
            "test_pairs": user.num_test,
            "acc_init": float(scores.before[i]),
            "acc_adapted": float(scores.after[i]),
        }
        for i, user in enumerate(users)
    ]
    return EvaluationReport(adapted=adapted, init=init, per_user=per_user)


def holdout_accuracy(model: MRM, embeddings: Tensor, users: list[UserPairs], inner_lr: float, steps: int) -> float:
    """Mean user accuracy on held-out training pairs: the default model-selection metric."""
    scores = score_users(model, embeddings, holdout_pair_sets(users), inner_lr, steps)
    return float(scores.after.mean()) if scores.after.numel() else float("nan")


def nonfinite_to_none(value):
    """Return `value` with every NaN or infinite float, at any depth of dicts and lists, replaced by None.

    `json.dumps` writes such floats as the bare tokens NaN and Infinity, which
    strict JSON readers reject; None is written as null. Summary figures are
    NaN when a group is empty (for example no unseen users).
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: nonfinite_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [nonfinite_to_none(item) for item in value]
    return value


def write_per_user_csv(rows: list[dict], path: str | Path) -> None:
    """Write per-user rows to CSV atomically."""
    fields = ["user_id", "split", "train_pairs", "test_pairs", "acc_init", "acc_adapted"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
