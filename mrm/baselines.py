"""A single global Bradley-Terry head: the non-personalised baseline MRM is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mrm.data import UserPairs
from mrm.model import MRM


def fit_global_head(embeddings: Tensor, users: list[UserPairs], epochs: int = 200, lr: float = 1e-2, seed: int = 0) -> MRM:
    """Fit one linear reward head (an MRM with K = 1) on the pooled training pairs of `users`."""
    torch.manual_seed(seed)
    head = MRM(in_dim=embeddings.shape[1], hidden_layers=[1])
    chosen = embeddings[torch.cat([u.train_chosen for u in users])].float()
    rejected = embeddings[torch.cat([u.train_rejected for u in users])].float()
    optimizer = torch.optim.Adam(head.layers.parameters(), lr=lr)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = -F.logsigmoid(head(chosen) - head(rejected)).mean()
        loss.backward()
        optimizer.step()
    return head.eval()


@torch.no_grad()
def user_accuracy(model: MRM, embeddings: Tensor, users: list[UserPairs]) -> Tensor:
    """Compute each user's test accuracy `[U]` under `model` with no adaptation."""
    return torch.tensor([
        float(((model(embeddings[u.test_chosen]) - model(embeddings[u.test_rejected])) > 0).float().mean())
        for u in users
    ])
