"""Few-shot personalisation: Adam on the K mixture logits only.

The base rewards of an embedding do not depend on the mixture logits, so a
user's labelled pairs reduce to `margin_bases = base(chosen) - base(rejected)`
of shape `[P, K]`, and the whole inner loop runs in K dimensions. Many users
are adapted at once by padding their pairs to `[U, P, K]` with a mask.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mrm.model import MRM
from mrm.objectives import bradley_terry_loss, pair_accuracy

# Published inner learning rates (one Adam step) per benchmark.
PUBLISHED_INNER_LR = {"reddit": 5e-3, "prism": 1e-3}
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass
class AdamState:
    """First and second moments of a functional Adam, plus the step count."""

    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: int = 0

    @classmethod
    def zeros_like(cls, params: Tensor) -> AdamState:
        return cls(torch.zeros_like(params), torch.zeros_like(params), 0)


def _sqrt_with_zero_grad_at_zero(values: Tensor) -> Tensor:
    # sqrt has an infinite derivative at 0; a component whose gradient is exactly
    # zero would turn the second-order meta-gradient into NaN. Same forward value.
    positive = values > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, values, torch.ones_like(values))), torch.zeros_like(values))


def adam_step(params: Tensor, grad: Tensor, state: AdamState, lr: float) -> tuple[Tensor, AdamState]:
    """Take one Adam step (the update of `torch.optim.Adam` with default settings), differentiable and out of place."""
    beta1, beta2 = ADAM_BETAS
    step = state.step + 1
    exp_avg = beta1 * state.exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * state.exp_avg_sq + (1 - beta2) * grad * grad
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denom = _sqrt_with_zero_grad_at_zero(exp_avg_sq) / bias_correction2**0.5 + ADAM_EPS
    new_params = params - (lr / bias_correction1) * exp_avg / denom
    return new_params, AdamState(exp_avg, exp_avg_sq, step)


def margins_from_logits(margin_bases: Tensor, logits: Tensor) -> Tensor:
    """Reward margins `[U, P]` from margin bases `[U, P, K]` and per-user logits `[U, K]`."""
    weights = torch.softmax(logits, dim=-1)  # (U, K)
    return torch.einsum("upk,uk->up", margin_bases, weights)


@dataclass
class InnerLoopResult:
    """Adapted logits `[U, K]` and support loss/accuracy `[steps + 1, U]` (row 0: before any step)."""

    logits: Tensor
    support_loss: Tensor
    support_accuracy: Tensor


def inner_loop(
    margin_bases: Tensor,
    mask: Tensor,
    init_logits: Tensor,
    steps: int,
    lr: float,
    create_graph: bool = False,
) -> InnerLoopResult:
    """Run `steps` Adam steps with fresh state on each user's Bradley-Terry loss.

    Args:
        margin_bases: `[U, P, K]` base-reward differences of each user's pairs.
        mask: `[U, P]`, true for real (not padded) pairs.
        init_logits: `[K]` shared or `[U, K]` per-user starting logits.
        create_graph: keep the graph through the steps so gradients reach
            `init_logits` and `margin_bases` (meta-training). Without it the
            returned logits are detached.
    """
    num_users, _, num_bases = margin_bases.shape
    logits = init_logits.expand(num_users, num_bases)
    if not create_graph:
        logits = logits.detach()
        margin_bases = margin_bases.detach()
    state = AdamState.zeros_like(logits)
    losses, accuracies = [], []

    with torch.enable_grad():
        for _ in range(steps):
            if not logits.requires_grad:
                logits = logits.clone().requires_grad_(True)
            margins = margins_from_logits(margin_bases, logits)  # (U, P)
            loss = bradley_terry_loss(margins, mask)  # (U,)
            losses.append(loss.detach())
            accuracies.append(pair_accuracy(margins.detach(), mask))

            # Users' losses are independent, so the gradient of their sum is each user's own gradient.
            (grad,) = torch.autograd.grad(loss.sum(), logits, create_graph=create_graph)
            logits, state = adam_step(logits, grad, state, lr)
            if not create_graph:
                logits = logits.detach()
                state = AdamState(state.exp_avg.detach(), state.exp_avg_sq.detach(), state.step)

    with torch.no_grad():
        margins = margins_from_logits(margin_bases, logits)
        losses.append(bradley_terry_loss(margins, mask))
        accuracies.append(pair_accuracy(margins, mask))
    return InnerLoopResult(logits, torch.stack(losses), torch.stack(accuracies))


def pad_pairs(index_lists: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Pad per-user (chosen, rejected) row-index tensors to `[U, P]` with a mask.

    Padded positions point at row 0 and are masked out.
    """
    num_users = len(index_lists)
    width = max((chosen.numel() for chosen, _ in index_lists), default=0)
    chosen_rows = torch.zeros(num_users, width, dtype=torch.long)
    rejected_rows = torch.zeros(num_users, width, dtype=torch.long)
    mask = torch.zeros(num_users, width, dtype=torch.bool)
    for user, (chosen, rejected) in enumerate(index_lists):
        count = chosen.numel()
        chosen_rows[user, :count] = chosen
        rejected_rows[user, :count] = rejected
        mask[user, :count] = True
    return chosen_rows, rejected_rows, mask


def pad_margin_bases(rows: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Pad per-user margin bases `[P_u, K]` to `[U, P, K]`, with a mask `[U, P]` that is true for real pairs."""
    lengths = torch.tensor([r.shape[0] for r in rows])
    padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (U, P, K)
    mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
    return padded, mask.to(padded.device)


def remap_rows(pair_lists: list[list[tuple[Tensor, Tensor]]]) -> tuple[Tensor, list[list[tuple[Tensor, Tensor]]]]:
    """Find the distinct embedding rows used by several lists of per-user (chosen, rejected) pairs.

    Returns the distinct rows `[R]` and the same lists with every index
    replaced by its position among them, so base rewards are computed once
    per row and then gathered.
    """
    flat = [part for pairs in pair_lists for chosen_rejected in pairs for part in chosen_rejected]
    if not flat:
        return torch.empty(0, dtype=torch.long), [[] for _ in pair_lists]
    rows, inverse = torch.unique(torch.cat(flat), return_inverse=True)
    pieces = iter(torch.split(inverse, [part.numel() for part in flat]))
    remapped = [[(next(pieces), next(pieces)) for _ in pairs] for pairs in pair_lists]
    return rows, remapped


def stack_margin_bases(table: Tensor, pairs: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Margin bases `[U, P, K]` and mask `[U, P]` from a base-reward table `[R, K]` and per-user row positions."""
    chosen, rejected, mask = pad_pairs(pairs)
    device = table.device
    chosen, rejected, mask = chosen.to(device), rejected.to(device), mask.to(device)
    return table[chosen] - table[rejected], mask


# ----------------------------------------------------------------------------- single-user API


@dataclass
class AdaptResult:
    """A user's adapted mixture logits and the support-set trace.

    `support_loss` and `support_accuracy` have `steps + 1` values: before the
    first step, then after each step.
    """

    logits: Tensor  # [K]
    support_loss: list[float] = field(default_factory=list)
    support_accuracy: list[float] = field(default_factory=list)
    num_pairs: int = 0


def _embedding_tensor(name: str, value, in_dim: int) -> Tensor:
    """Return `value` as a float tensor `[..., in_dim]` of finite numbers, or raise a ValueError naming `name`."""
    try:
        tensor = torch.as_tensor(value, dtype=torch.float32) if not isinstance(value, Tensor) else value
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be a tensor of shape [..., {in_dim}]; could not convert it: {error}") from error
    if tensor.ndim == 0 or tensor.shape[-1] != in_dim:
        width = tensor.shape[-1] if tensor.ndim else "none"
        raise ValueError(
            f"{name} of shape {tuple(tensor.shape)}: embedding width {width} does not match the checkpoint's "
            f"in_dim {in_dim}; use the encoder the checkpoint was trained with"
        )
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad_rows = int((~finite.reshape(-1, in_dim).all(dim=1)).sum())
        raise ValueError(f"{name} contains NaN or infinite values in {bad_rows} row(s); re-embed those texts or drop them")
    return tensor


def _logits_tensor(value, num_bases: int, device: torch.device) -> Tensor:
    """Return mixture logits `value` as a finite float tensor `[num_bases]`, or raise a ValueError."""
    tensor = torch.as_tensor(value, dtype=torch.float32, device=device)
    if tensor.shape != (num_bases,):
        raise ValueError(f"mixture logits must have shape [{num_bases}] (K of the checkpoint), got {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"mixture logits must be finite, got {tensor.tolist()}")
    return tensor


def _check_adaptation_settings(steps: int, lr: float) -> None:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps={steps!r} must be a non-negative integer (the number of Adam steps)")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr={lr!r} must be a positive, finite learning rate (the published one is 5e-3)")


def adapt_logits(
    model: MRM,
    chosen_embeddings: Tensor,
    rejected_embeddings: Tensor,
    init_logits: Tensor | None = None,
    steps: int = 1,
    lr: float = PUBLISHED_INNER_LR["reddit"],
) -> AdaptResult:
    """Adapt the mixture logits to one user's labelled pairs; the model is not modified.

    Args:
        chosen_embeddings, rejected_embeddings: `[P, H]` embeddings of the preferred and
            the other response of each pair.
        init_logits: starting logits `[K]`; defaults to the model's meta-learned ones.
        steps: Adam steps on the pairs, with fresh optimizer state. The default of
            one step at `lr` 5e-3 is the published Reddit setting.
        lr: Adam learning rate of those steps.

    Raises:
        ValueError: for mismatched or non-finite embeddings, logits of the wrong
            size, or invalid `steps` or `lr`.
    """
    chosen_embeddings = _embedding_tensor("chosen_embeddings", chosen_embeddings, model.in_dim)
    rejected_embeddings = _embedding_tensor("rejected_embeddings", rejected_embeddings, model.in_dim)
    _check_adaptation_settings(steps, lr)
    if chosen_embeddings.shape != rejected_embeddings.shape or chosen_embeddings.ndim != 2:
        raise ValueError(
            f"chosen and rejected embeddings must both be [pairs, hidden]; got {tuple(chosen_embeddings.shape)} "
            f"and {tuple(rejected_embeddings.shape)}"
        )
    if chosen_embeddings.shape[0] == 0:
        raise ValueError("no labelled pairs to adapt on; label at least one pair")
    if chosen_embeddings.shape[1] != model.in_dim:
        raise ValueError(
            f"embedding width {chosen_embeddings.shape[1]} does not match the checkpoint's in_dim {model.in_dim}; "
            "use the encoder the checkpoint was trained with"
        )

    device = model.shared_weight.device
    start = model.shared_weight if init_logits is None else _logits_tensor(init_logits, model.num_bases, device)
    with torch.no_grad():
        margin_bases = model.base_rewards(chosen_embeddings.to(device)) - model.base_rewards(rejected_embeddings.to(device))
    mask = torch.ones(1, margin_bases.shape[0], dtype=torch.bool, device=margin_bases.device)
    result = inner_loop(margin_bases[None], mask, start.detach().to(margin_bases.device), steps, lr)
    return AdaptResult(
        logits=result.logits[0].cpu(),
        support_loss=result.support_loss[:, 0].tolist(),
        support_accuracy=result.support_accuracy[:, 0].tolist(),
        num_pairs=chosen_embeddings.shape[0],
    )


def adapt_users(
    model: MRM,
    users: list[tuple[Tensor, Tensor]],
    init_logits: Tensor | None = None,
    steps: int = 1,
    lr: float = PUBLISHED_INNER_LR["reddit"],
) -> list[AdaptResult]:
    """Adapt many users at once; `users` contains each user's (chosen `[P_u, H]`, rejected `[P_u, H]`) embeddings.

    Equivalent to calling `adapt_logits` per user, in one padded computation.
    """
    if not users:
        return []
    _check_adaptation_settings(steps, lr)
    users = [
        (_embedding_tensor(f"user {index} chosen embeddings", chosen, model.in_dim),
         _embedding_tensor(f"user {index} rejected embeddings", rejected, model.in_dim))
        for index, (chosen, rejected) in enumerate(users)
    ]
    for index, (chosen, rejected) in enumerate(users):
        if chosen.shape != rejected.shape or chosen.ndim != 2 or chosen.shape[0] == 0 or chosen.shape[1] != model.in_dim:
            raise ValueError(
                f"user {index}: expected non-empty chosen and rejected embeddings of shape [pairs, {model.in_dim}], "
                f"got {tuple(chosen.shape)} and {tuple(rejected.shape)}"
            )
    device = model.shared_weight.device
    with torch.no_grad():
        margins = [model.base_reward_margins(chosen.to(device) - rejected.to(device)) for chosen, rejected in users]
    margin_bases, mask = pad_margin_bases(margins)  # (U, P, K), (U, P)
    start = model.shared_weight if init_logits is None else _logits_tensor(init_logits, model.num_bases, device)
    result = inner_loop(margin_bases, mask, start.detach(), steps, lr)
    return [
        AdaptResult(
            logits=result.logits[i].cpu(),
            support_loss=result.support_loss[:, i].tolist(),
            support_accuracy=result.support_accuracy[:, i].tolist(),
            num_pairs=margins[i].shape[0],
        )
        for i in range(len(users))
    ]


@torch.no_grad()
def score(model: MRM, embeddings: Tensor, logits: Tensor | None = None) -> Tensor:
    """Rewards `[N]` of embeddings `[N, H]` under the given mixture logits (default: the model's)."""
    device = model.shared_weight.device
    embeddings = _embedding_tensor("embeddings", embeddings, model.in_dim)
    mixture = model.shared_weight if logits is None else _logits_tensor(logits, model.num_bases, device)
    return model(embeddings.to(device), mixture).cpu()


def mixture_weights(logits: Tensor) -> list[float]:
    """Softmax of mixture logits as a plain list."""
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float32), dim=-1).tolist()
