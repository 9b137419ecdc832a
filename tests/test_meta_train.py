import json

import pytest
import torch
from reference_loop import reference_evaluate_user, reference_group_objective, reference_train_epoch
from synthetic import make_population

from mrm.baselines import fit_global_head, user_accuracy
from mrm.data import build_user_splits, read_embedding_files
from mrm.evaluate import evaluate
from mrm.meta_train import (
    TrainConfig,
    TrainingDivergedError,
    _train_one_epoch,
    cosine_with_warmup,
    group_meta_objective,
    meta_train,
    schedule_length,
    task_pairs_for_epoch,
    training_differences,
)
from mrm.model import MRM


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("pop") / "pop"
    pt, js = make_population(prefix, num_users=12, dim=16, train_pairs=24, test_pairs=12, seed=3)
    data = read_embedding_files(pt, js)
    return pt, js, data, build_user_splits(data, seed=42)


def fresh_model(in_dim=16, sizes=(3,), bias=False):
    torch.manual_seed(5)
    return MRM(in_dim, sizes, bias)


def gradients(model):
    # Biases cancel in reward margins, so the vectorized path leaves their gradient unset (zero).
    return {name: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for name, p in model.named_parameters()}


@pytest.mark.parametrize("inner_steps,rpo_gamma,sizes,bias", [(1, 0.5, (3,), False), (3, 0.5, (4, 3), True), (2, 0.0, (3,), False)])
def test_meta_gradient_matches_per_user_loop(population, inner_steps, rpo_gamma, sizes, bias):
    _, _, data, splits = population
    tasks = [task_pairs_for_epoch(user, i, 1, 42, 0.5) for i, user in enumerate(splits.seen[:4])]
    fast, slow = fresh_model(sizes=sizes, bias=bias), fresh_model(sizes=sizes, bias=bias)

    differences = training_differences(data.embeddings, splits.seen, torch.device("cpu"))
    fast_objective, fast_losses = group_meta_objective(fast, differences, tasks, inner_steps, 0.3, 0.5, rpo_gamma)
    fast_objective.backward()
    slow_objective, slow_losses = reference_group_objective(slow, data.embeddings, tasks, inner_steps, 0.3, 0.5, rpo_gamma)
    slow_objective.backward()

    assert torch.allclose(fast_losses, slow_losses, atol=1e-5)
    for name, grad in gradients(fast).items():
        assert torch.allclose(grad, gradients(slow)[name], atol=1e-5), name


def test_meta_gradient_flows_through_inner_step(population):
    # One Adam step moves each logit by about lr * sign(gradient), whose derivative is
    # nearly zero, so second-order terms only show from the second inner step on.
    _, _, data, splits = population
    tasks = [task_pairs_for_epoch(user, i, 1, 42, 0.5) for i, user in enumerate(splits.seen[:2])]
    model = fresh_model()
    objective, _ = group_meta_objective(model, training_differences(data.embeddings, splits.seen, "cpu"), tasks, 3, 0.3, 0.5, 0.5)
    layer_grad, = torch.autograd.grad(objective, model.layers[0].weight, retain_graph=True)

    # First-order version: same objective with the inner step's gradient cut off.
    from mrm.adapt import inner_loop, margins_from_logits
    from mrm.adapt import pad_margin_bases as _padded
    from mrm.objectives import bradley_terry_loss, rpo_objective

    differences = training_differences(data.embeddings, splits.seen, "cpu")
    support_bases, support_mask = _padded([model.base_reward_margins(differences[t.user_index][t.support_positions]).detach() for t in tasks])
    query_bases, query_mask = _padded([model.base_reward_margins(differences[t.user_index][t.query_positions]) for t in tasks])
    adapted = inner_loop(support_bases, support_mask, model.shared_weight, 3, 0.3, create_graph=False).logits
    first_order = rpo_objective(bradley_terry_loss(margins_from_logits(query_bases, adapted), query_mask), 0.5, 0.5)
    first_order_grad, = torch.autograd.grad(first_order, model.layers[0].weight)

    assert (layer_grad - first_order_grad).abs().max() > 1e-3 * layer_grad.abs().max()


def test_initial_logits_get_gradient_through_adaptation(population):
    _, _, data, splits = population
    tasks = [task_pairs_for_epoch(user, i, 1, 42, 0.5) for i, user in enumerate(splits.seen[:2])]
    model = fresh_model()
    objective, _ = group_meta_objective(model, training_differences(data.embeddings, splits.seen, "cpu"), tasks, 2, 0.3, 0.5, 0.5)
    objective.backward()
    assert model.shared_weight.grad.abs().sum() > 0


def test_training_epoch_matches_per_user_loop(population):
    _, _, data, splits = population
    config = TrainConfig(embed_pt="x", meta_json="y", inner_lr=0.3, train_inner_epochs=2, tasks_per_batch=3, val_ratio=0.5)
    models = [fresh_model(), fresh_model()]
    optimizers = [torch.optim.Adam(m.parameters(), lr=0.05) for m in models]
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, cosine_with_warmup(20, 2)) for o in optimizers]
    for epoch in (1, 2):
        _train_one_epoch(models[0], training_differences(data.embeddings, splits.seen, "cpu"), splits.seen, epoch, config, optimizers[0], schedules[0])
        reference_train_epoch(models[1], data.embeddings, splits.seen, epoch, config, optimizers[1], schedules[1])
    for (name, fast), slow in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.allclose(fast, slow, atol=1e-5), name


def test_evaluation_matches_per_user_loop(population):
    _, _, data, splits = population
    model = fresh_model()
    report = evaluate(model, data.embeddings, splits.seen, splits.unseen, inner_lr=0.4, steps=3)
    for row, user in zip(report.per_user, splits.all_users):
        before, after = reference_evaluate_user(model, data.embeddings, user, steps=3, lr=0.4)
        assert row["acc_init"] == pytest.approx(before, abs=1e-5)
        assert row["acc_adapted"] == pytest.approx(after, abs=1e-5)


def test_cosine_schedule_warms_up_then_decays():
    factor = cosine_with_warmup(total_steps=100, warmup_steps=10)
    assert [round(factor(s), 4) for s in (0, 5, 9, 10, 55, 100)] == [0.0, 0.5, 0.9, 1.0, 0.5, 0.0]


def test_cosine_schedule_matches_transformers():
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    reference = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=7, num_training_steps=50)
    factor = cosine_with_warmup(total_steps=50, warmup_steps=7)
    for step in range(55):  # a few steps past the end, as a final partial group can take
        assert factor(step) == pytest.approx(reference.lr_lambdas[0](step), abs=1e-12)


def test_meta_train_is_deterministic(population):
    pt, js, _, _ = population
    config = dict(embed_pt=str(pt), meta_json=str(js), epochs=3, hidden_layers=[3], inner_lr=0.3, train_inner_epochs=2,
                  eval_inner_epochs=2, meta_lr=0.05, log_freq=3, seed=1)
    first = meta_train(TrainConfig(**config)).model.state_dict()
    second = meta_train(TrainConfig(**config)).model.state_dict()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_meta_train_writes_run_folder(population, tmp_path):
    pt, js, _, _ = population
    events = []
    config = TrainConfig(embed_pt=str(pt), meta_json=str(js), epochs=4, hidden_layers=[3], log_freq=2, save_freq=2,
                         output_path=str(tmp_path / "run"))
    meta_train(config, callback=events.append)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "epoch_0004" / "model.safetensors").is_file()
    assert (run / "best" / "model.safetensors").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((run / "progress.json").read_text())["status"] == "done"
    assert set(json.loads((run / "results.json").read_text())) >= {"seen", "unseen", "overall", "worst10", "init", "selected_on"}
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3, 4]


def test_select_on_test_is_labelled_optimistic(population, tmp_path):
    pt, js, _, _ = population
    result = meta_train(TrainConfig(embed_pt=str(pt), meta_json=str(js), epochs=2, hidden_layers=[3], log_freq=1, select_on="test"))
    assert "optimistic" in result.results["selected_on"]


def test_width_mismatch_with_checkpoint_fails_before_training(population, tmp_path):
    pt, js, _, _ = population
    from mrm.model import save_mrm

    save_mrm(MRM(32, [2]), tmp_path / "wide")
    with pytest.raises(ValueError, match="does not match the checkpoint's in_dim 32"):
        meta_train(TrainConfig(embed_pt=str(pt), meta_json=str(js), ckpt=str(tmp_path / "wide"), epochs=1))


def test_data_error_leaves_no_run_folder(tmp_path):
    (tmp_path / "d.pt").write_bytes(b"")
    (tmp_path / "d.json").write_text("{}")
    with pytest.raises(ValueError):
        meta_train(TrainConfig(embed_pt=str(tmp_path / "d.pt"), meta_json=str(tmp_path / "d.json"), output_path=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_diverged_run_is_marked_failed(population, tmp_path):
    pt, js, _, _ = population
    config = TrainConfig(embed_pt=str(pt), meta_json=str(js), epochs=3, inner_lr=1e300, output_path=str(tmp_path / "run"))
    with pytest.raises(TrainingDivergedError, match="at epoch 1"):
        meta_train(config)
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["status"] == "failed"
    assert "lower --inner_lr" in progress["message"]


def test_meta_training_beats_baselines_unseen(tmp_path):
    pt, js = make_population(tmp_path / "big", num_users=24, dim=32, train_pairs=40, test_pairs=20, seed=0)
    config = TrainConfig(embed_pt=str(pt), meta_json=str(js), epochs=60, hidden_layers=[2], inner_lr=1.0,
                         train_inner_epochs=5, eval_inner_epochs=5, meta_lr=0.1, log_freq=60, select_on="last", val_ratio=0.5)
    results = meta_train(config).results
    data = read_embedding_files(pt, js)
    splits = build_user_splits(data, seed=42)
    global_head = fit_global_head(data.embeddings, splits.seen)
    global_unseen = float(user_accuracy(global_head, data.embeddings, splits.unseen).mean())

    assert results["unseen"] > results["init"]["unseen"] + 0.03
    assert results["unseen"] > global_unseen + 0.03


def test_schedule_length_uses_published_formula():
    assert schedule_length(num_seen=5, epochs=3, tasks_per_batch=2) == 7  # 15 // 2, not 3 groups x 3 epochs
    assert schedule_length(num_seen=40, epochs=200, tasks_per_batch=4) == 2000
