"""Training objectives: the Bradley-Terry pair loss and the Robust Personalization Objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the last dimension, counting only positions where `mask` is true."""
    if mask is None:
        return values.mean(dim=-1)
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1.0)


def bradley_terry_loss(margins: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of `-log sigmoid(r(chosen) - r(rejected))` over the last dimension.

    `margins` is `[..., P]` reward differences; padded positions are excluded
    by `mask` (`[..., P]`, true for real pairs). Returns `[...]`.
    """
    return masked_mean(-F.logsigmoid(margins), mask)


def pair_accuracy(margins: Tensor, mask: Tensor | None = None) -> Tensor:
    """Fraction of pairs ranked correctly; a tie (margin exactly 0) counts as wrong."""
    return masked_mean((margins > 0).to(torch.float32), mask)


def rpo_objective(task_losses: Tensor, rpo_ratio: float, rpo_gamma: float) -> Tensor:
    """Robust Personalization Objective over a group of task losses `[T]`.

    `tau` is the `(1 - rpo_ratio)` quantile of the losses (linear
    interpolation). With `rpo_gamma > 0` each loss is weighted by
    `sigmoid((L - tau) / rpo_gamma)` (weights not detached) and the weighted
    losses are summed. With `rpo_gamma <= 0` only losses strictly above `tau`
    are summed.
    """
    if task_losses.ndim != 1 or task_losses.numel() == 0:
        raise ValueError(f"rpo_objective expects a non-empty 1-D tensor of task losses, got shape {tuple(task_losses.shape)}")
    if not 0.0 <= rpo_ratio <= 1.0:
        raise ValueError(f"rpo_ratio={rpo_ratio} must lie in [0, 1]")
    tau = torch.quantile(task_losses, 1.0 - rpo_ratio)
    if rpo_gamma > 0:
        weights = torch.sigmoid((task_losses - tau) / rpo_gamma)
        return (weights * task_losses).sum()
    return task_losses[task_losses > tau].sum()
