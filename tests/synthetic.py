"""Synthetic multi-user preference data in the embedding-file format.

Every user scores a response embedding `x` with `sum_j w_j * <d_j, x>` over a
few hidden reward directions `d_j`. Users differ in their weights `w`, which
lean towards one of the directions, so their preferences conflict. Labels are drawn
Bradley-Terry from the score difference.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mrm.data import write_embedding_files


def make_population(
    prefix: str | Path,
    num_users: int = 24,
    dim: int = 32,
    train_pairs: int = 40,
    test_pairs: int = 20,
    num_directions: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    noise: float = 0.25,
    scale: float = 20.0,
) -> tuple[Path, Path]:
    """Write `PREFIX.pt` + `PREFIX.json` and return their paths."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(dim, num_directions, generator=generator)).Q.T  # (D, dim), orthonormal

    # Each user leans strongly towards one direction.
    favourite = torch.arange(num_users) % num_directions
    weights = torch.full((num_users, num_directions), 0.15) + torch.rand(num_users, num_directions, generator=generator) * 0.1
    weights[torch.arange(num_users), favourite] = 1.0

    pairs_per_user = train_pairs + test_pairs
    first = torch.randn(num_users, pairs_per_user, dim, generator=generator) * scale
    second = torch.randn(num_users, pairs_per_user, dim, generator=generator) * scale
    utility_gap = torch.einsum("upd,kd,uk->up", first - second, directions, weights) / scale  # (U, P)
    prefer_first = torch.rand(num_users, pairs_per_user, generator=generator) < torch.sigmoid(utility_gap / noise)

    chosen = torch.where(prefer_first[..., None], first, second)
    rejected = torch.where(prefer_first[..., None], second, first)
    rows = torch.stack([chosen, rejected], dim=2).reshape(-1, dim)  # chosen/rejected interleaved
    users = {}
    for user in range(num_users):
        entries = []
        for pair in range(pairs_per_user):
            row = 2 * (user * pairs_per_user + pair)
            split = "train" if pair < train_pairs else "val"
            entries.append({"chosen_idx": row, "rejected_idx": row + 1, "split": split})
        users[f"user{user:03d}"] = entries
    return write_embedding_files(prefix, rows.to(dtype), users)
