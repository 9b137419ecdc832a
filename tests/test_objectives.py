import math

import pytest
import torch

from mrm.objectives import bradley_terry_loss, pair_accuracy, rpo_objective


def test_bradley_terry_loss_hand_values():
    margins = torch.tensor([0.0, 2.0])
    expected = (math.log(2.0) + math.log(1.0 + math.exp(-2.0))) / 2
    assert bradley_terry_loss(margins).item() == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_loss_ignores_padding():
    margins = torch.tensor([[1.0, -50.0]])
    mask = torch.tensor([[True, False]])
    assert bradley_terry_loss(margins, mask).item() == pytest.approx(math.log(1.0 + math.exp(-1.0)), rel=1e-6)


def test_pair_accuracy_counts_ties_as_wrong():
    assert pair_accuracy(torch.tensor([1.0, 0.0, -1.0, 3.0])).item() == pytest.approx(0.5)


def test_rpo_smooth_weights_hand_values():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # (1 - 0.5) quantile with linear interpolation: position 1.5 -> 2.5
    weights = [1 / (1 + math.exp(-(value - 2.5) / 0.5)) for value in (1.0, 2.0, 3.0, 4.0)]
    expected = sum(w * v for w, v in zip(weights, (1.0, 2.0, 3.0, 4.0)))
    assert rpo_objective(losses, rpo_ratio=0.5, rpo_gamma=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_rpo_hard_tail_sums_losses_above_quantile():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # (1 - 0.25) quantile: position 2.25 -> 3.25; only 4.0 lies strictly above
    assert rpo_objective(losses, rpo_ratio=0.25, rpo_gamma=0.0).item() == pytest.approx(4.0)


def test_rpo_hard_tail_excludes_loss_equal_to_threshold():
    losses = torch.tensor([1.0, 3.0, 5.0])
    assert rpo_objective(losses, rpo_ratio=0.5, rpo_gamma=-1.0).item() == pytest.approx(5.0)


def test_rpo_weights_are_not_detached():
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    rpo_objective(losses, 0.5, 0.5).backward()
    sigmoid = [1 / (1 + math.exp(-(v - 2.0) / 0.5)) for v in (1.0, 2.0, 3.0)]
    # d/dL_i of sum_j s((L_j - tau)/g) L_j includes the weight's own derivative, so it differs from s_i.
    assert losses.grad[2].item() != pytest.approx(sigmoid[2], abs=1e-4)


def test_rpo_rejects_empty_losses():
    with pytest.raises(ValueError, match="non-empty"):
        rpo_objective(torch.tensor([]), 0.5, 0.5)
