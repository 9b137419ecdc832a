import pytest
import torch
import torch.nn.functional as F

from mrm.adapt import adapt_logits, adapt_users, inner_loop, pad_pairs, score
from mrm.model import MRM


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MRM(8, [3])


def reference_adam(model, chosen, rejected, steps, lr):
    logits = model.shared_weight.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        (-F.logsigmoid(model(chosen, logits) - model(rejected, logits)).mean()).backward()
        optimizer.step()
    return logits.detach()


def test_adapt_matches_torch_adam(model):
    chosen, rejected = torch.randn(6, 8) * 40, torch.randn(6, 8) * 40
    result = adapt_logits(model, chosen, rejected, steps=7, lr=0.2)
    assert torch.allclose(result.logits, reference_adam(model, chosen, rejected, 7, 0.2), atol=1e-6)


def test_adapt_changes_only_logits(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapt_logits(model, torch.randn(4, 8), torch.randn(4, 8), steps=3, lr=0.5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_adapt_trace_length(model):
    result = adapt_logits(model, torch.randn(4, 8), torch.randn(4, 8), steps=5, lr=0.1)
    assert len(result.support_loss) == 6


def test_adapt_lowers_support_loss(model):
    chosen, rejected = torch.randn(8, 8) * 50, torch.randn(8, 8) * 50
    result = adapt_logits(model, chosen, rejected, steps=20, lr=0.3)
    assert result.support_loss[-1] < result.support_loss[0]


def test_adapt_many_users_equals_one_at_a_time(model):
    users = [(torch.randn(n, 8) * 30, torch.randn(n, 8) * 30) for n in (3, 7, 1)]
    pairs = [(c, r) for c, r in users]
    with torch.no_grad():
        bases = [model.base_rewards(c) - model.base_rewards(r) for c, r in pairs]
    width = max(b.shape[0] for b in bases)
    stacked = torch.zeros(3, width, 3)
    for i, b in enumerate(bases):
        stacked[i, : b.shape[0]] = b
    _, _, mask = pad_pairs([(torch.arange(b.shape[0]), torch.arange(b.shape[0])) for b in bases])
    together = inner_loop(stacked, mask, model.shared_weight, steps=4, lr=0.3).logits
    for i, (c, r) in enumerate(users):
        alone = adapt_logits(model, c, r, steps=4, lr=0.3).logits
        assert torch.allclose(together[i], alone, atol=1e-6)


def test_adapt_rejects_wrong_width(model):
    with pytest.raises(ValueError, match="does not match the checkpoint's in_dim 8"):
        adapt_logits(model, torch.randn(2, 5), torch.randn(2, 5))


def test_adapt_rejects_no_pairs(model):
    with pytest.raises(ValueError, match="label at least one pair"):
        adapt_logits(model, torch.empty(0, 8), torch.empty(0, 8))


def test_score_with_given_logits_is_pure(model):
    x = torch.randn(5, 8)
    logits = torch.tensor([3.0, -1.0, 0.0])
    first = score(model, x, logits)
    assert torch.equal(first, score(model, x, logits))
    assert torch.allclose(first, model(x, logits).detach())


def test_adapt_users_matches_single_user_calls(model):
    users = [(torch.randn(n, 8) * 30, torch.randn(n, 8) * 30) for n in (2, 5)]
    together = adapt_users(model, users, steps=6, lr=0.2)
    for result, (chosen, rejected) in zip(together, users):
        alone = adapt_logits(model, chosen, rejected, steps=6, lr=0.2)
        assert torch.allclose(result.logits, alone.logits, atol=1e-6)
        assert result.support_loss == pytest.approx(alone.support_loss, abs=1e-6)


def test_adapt_users_names_the_bad_user(model):
    with pytest.raises(ValueError, match="user 1"):
        adapt_users(model, [(torch.randn(2, 8), torch.randn(2, 8)), (torch.randn(2, 4), torch.randn(2, 4))])


def test_adapt_rejects_nan_embeddings(model):
    chosen = torch.randn(3, 8)
    chosen[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"chosen_embeddings contains NaN or infinite values in 1 row"):
        adapt_logits(model, chosen, torch.randn(3, 8))


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_adapt_rejects_invalid_lr(model, lr):
    with pytest.raises(ValueError, match="must be a positive, finite learning rate"):
        adapt_logits(model, torch.randn(2, 8), torch.randn(2, 8), lr=lr)


@pytest.mark.parametrize("steps", [-1, 1.5, True])
def test_adapt_rejects_invalid_steps(model, steps):
    with pytest.raises(ValueError, match="must be a non-negative integer"):
        adapt_logits(model, torch.randn(2, 8), torch.randn(2, 8), steps=steps)


def test_adapt_rejects_logits_of_wrong_size(model):
    with pytest.raises(ValueError, match=r"must have shape \[3\]"):
        adapt_logits(model, torch.randn(2, 8), torch.randn(2, 8), init_logits=torch.zeros(4))


def test_adapt_accepts_nested_lists(model):
    chosen, rejected = torch.randn(2, 8), torch.randn(2, 8)
    from_lists = adapt_logits(model, chosen.tolist(), rejected.tolist(), steps=2, lr=0.1)
    from_tensors = adapt_logits(model, chosen, rejected, steps=2, lr=0.1)
    assert torch.allclose(from_lists.logits, from_tensors.logits)


def test_score_rejects_wrong_width(model):
    with pytest.raises(ValueError, match="embedding width 10 does not match the checkpoint's in_dim 8"):
        score(model, torch.randn(2, 10))


def test_score_rejects_logits_of_wrong_size(model):
    with pytest.raises(ValueError, match=r"must have shape \[3\]"):
        score(model, torch.randn(2, 8), torch.zeros(2))


def test_adapt_users_rejects_nan_embeddings(model):
    bad = torch.randn(2, 8)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="user 1 rejected embeddings contains NaN"):
        adapt_users(model, [(torch.randn(2, 8), torch.randn(2, 8)), (torch.randn(2, 8), bad)])
