"""Plain per-user reference implementations, written for clarity rather than speed.

The vectorized library code must match these to 1e-5. They call the model on
raw embeddings for every user, keep their own Adam arithmetic (or
`torch.optim.Adam` where no graph is needed), and loop over users in Python.
The benchmark in `benchmarks/bench_core.py` times them as the baseline.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from mrm.data import UserPairs


def bt_loss(model, embeddings, chosen, rejected, logits):
    margin = model(embeddings[chosen].float(), logits) - model(embeddings[rejected].float(), logits)
    return -F.logsigmoid(margin).mean()


def differentiable_adam(model, embeddings, chosen, rejected, steps, lr):
    """Adapt `model.shared_weight` with hand-written Adam, keeping the graph for second-order gradients."""
    logits = model.shared_weight
    exp_avg = torch.zeros_like(logits)
    exp_avg_sq = torch.zeros_like(logits)
    for t in range(1, steps + 1):
        loss = bt_loss(model, embeddings, chosen, rejected, logits)
        (grad,) = torch.autograd.grad(loss, logits, create_graph=True)
        exp_avg = 0.9 * exp_avg + 0.1 * grad
        exp_avg_sq = 0.999 * exp_avg_sq + 0.001 * grad * grad
        corrected_avg = exp_avg / (1 - 0.9**t)
        corrected_sq = exp_avg_sq / (1 - 0.999**t)
        logits = logits - lr * corrected_avg / (corrected_sq.sqrt() + 1e-8)
    return logits


def quantile_linear(values, q):
    """Linear-interpolation quantile computed from the sorted values."""
    ordered = torch.sort(values).values
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def reference_group_objective(model, embeddings, tasks, inner_steps, inner_lr, rpo_ratio, rpo_gamma):
    """Per-user loop version of `mrm.meta_train.group_meta_objective`."""
    losses = []
    for task in tasks:
        adapted = differentiable_adam(model, embeddings, *task.support, inner_steps, inner_lr)
        losses.append(bt_loss(model, embeddings, *task.query, adapted))
    losses = torch.stack(losses)
    tau = quantile_linear(losses, 1 - rpo_ratio)
    if rpo_gamma > 0:
        return sum(torch.sigmoid((loss - tau) / rpo_gamma) * loss for loss in losses), losses
    return sum(loss for loss in losses if loss > tau), losses


def reference_evaluate_user(model, embeddings, user: UserPairs, steps, lr):
    """Accuracy on the user's test pairs before and after adaptation with a real `torch.optim.Adam`."""
    personal = copy.deepcopy(model)
    for parameter in personal.layers.parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.Adam([personal.shared_weight], lr=lr)

    def accuracy():
        with torch.no_grad():
            margin = personal(embeddings[user.test_chosen].float()) - personal(embeddings[user.test_rejected].float())
            return (margin > 0).float().mean().item()

    before = accuracy()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = bt_loss(personal, embeddings, user.train_chosen, user.train_rejected, personal.shared_weight)
        loss.backward()
        optimizer.step()
    return before, accuracy()


def reference_train_epoch(model, embeddings, seen, epoch, config, optimizer, schedule):
    """One epoch of meta-training with the per-user loop, mirroring `mrm.meta_train._train_one_epoch`."""
    import random

    from mrm.meta_train import task_pairs_for_epoch

    order = list(range(len(seen)))
    random.Random(config.seed + epoch).shuffle(order)
    for start in range(0, len(order), config.tasks_per_batch):
        group = order[start : start + config.tasks_per_batch]
        tasks = [task_pairs_for_epoch(seen[i], i, epoch, config.seed, config.val_ratio) for i in group]
        objective, _ = reference_group_objective(
            model, embeddings, tasks, config.train_inner_epochs, config.inner_lr, config.rpo_ratio, config.rpo_gamma
        )
        optimizer.zero_grad()
        objective.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
