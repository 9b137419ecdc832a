"""Bi-level meta-training of MRM, vectorized over the users of a task group.

Each seen user is a task. Per outer step, a group of `tasks_per_batch` users
adapts the shared mixture logits on their support pairs with differentiable
Adam steps (`mrm.adapt.inner_loop` with `create_graph=True`). The Robust
Personalization Objective combines the adapted logits' query losses, and its
gradient reaches the layers and the initial logits.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from mrm.adapt import inner_loop, margins_from_logits, pad_margin_bases
from mrm.data import (
    DataError,
    EmbeddingData,
    UserPairs,
    UserSplits,
    build_user_splits,
    num_groups,
    pairs_in_groups,
    read_embedding_files,
    read_encoder_record,
    support_query_split,
)
from mrm.evaluate import evaluate, holdout_accuracy, write_per_user_csv
from mrm.model import MRM, WEIGHTS_NAME
from mrm.objectives import bradley_terry_loss, rpo_objective
from mrm.run_folder import RunFolder, check_output_path, clear_run_files

logger = logging.getLogger(__name__)

SELECT_ON = ("val", "test", "last")
DATASETS = ("REDDIT", "PRISM")
DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"


@dataclass
class TrainConfig:
    """Meta-training and evaluation settings; field names are the published command-line flags."""

    embed_pt: str = field(default="", metadata={"help": "embedding tensor file [rows, hidden] (.pt)"})
    meta_json: str = field(default="", metadata={"help": "metadata JSON {user_id: [entry, ...]} for embed_pt"})
    ckpt: str | None = field(default=None, metadata={"help": "start from this checkpoint (file, folder or Hub repo id) instead of a fresh head"})
    dataset: str = field(default="REDDIT", metadata={"help": "REDDIT (pairs split per pair) or PRISM (per conversation)", "choices": DATASETS})
    seen_train_limit: int = field(default=-1, metadata={"help": "training pairs kept per seen user; -1 keeps all"})
    unseen_train_limit: int = field(default=-1, metadata={"help": "training pairs kept per unseen user; -1 keeps all, 0 leaves unseen users out"})
    hidden_layers: list[int] = field(default_factory=lambda: [2], metadata={"help": "output size of each linear layer; the last is K"})
    use_bias: bool = field(default=False, metadata={"help": "give the linear layers a bias"})
    inner_lr: float = field(default=5e-3, metadata={"help": "Adam learning rate of the per-user adaptation"})
    meta_lr: float = field(default=5e-3, metadata={"help": "Adam learning rate of the outer (meta) update"})
    train_inner_epochs: int = field(default=1, metadata={"help": "inner Adam steps during meta-training"})
    eval_inner_epochs: int = field(default=1, metadata={"help": "inner Adam steps at evaluation"})
    tasks_per_batch: int = field(default=2, metadata={"help": "users (tasks) per outer step"})
    epochs: int = field(default=200, metadata={"help": "passes over the seen users"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "fraction of outer steps with linear learning-rate warm-up"})
    val_ratio: float = field(default=0.9, metadata={"help": "fraction of a user's training pairs (or conversations) in the query set"})
    score_threshold: float | None = field(default=None, metadata={
        "help": "PRISM only: keep a training pair when |chosen_score - rejected_score| is above this (test pairs are "
                "never filtered; the published scripts pass -1, which keeps every pair); unset: no filter"})
    rpo_ratio: float = field(default=0.5, metadata={"help": "RPO: threshold is the (1 - rpo_ratio) quantile of the group's task losses"})
    rpo_gamma: float = field(default=0.5, metadata={"help": "RPO temperature; <= 0 sums only losses above the threshold"})
    seed: int = field(default=42, metadata={"help": "seed of user splits, pair caps, support/query splits and initialisation"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto (cuda when available)"})
    output_path: str | None = field(default=None, metadata={"help": "run folder for logs, metrics, checkpoints and results; without it nothing is saved"})
    log_freq: int = field(default=10, metadata={"help": "evaluate every N epochs (and after the last)"})
    save_freq: int = field(default=50, metadata={"help": "keep a checkpoint every N epochs; 0 disables"})
    select_on: str = field(default="val", metadata={"help": "epoch selection: val (held-out training pairs of unseen users), test (published, optimistic), last", "choices": SELECT_ON})
    grad_clip: float = field(default=1.0, metadata={"help": "maximum gradient norm of the outer update; 0 turns clipping off"})
    overwrite: bool = field(default=False, metadata={"help": "replace the files and checkpoints an earlier run wrote in output_path; other files stay"})

    def validate_evaluation(self) -> None:
        """Raise ValueError naming each invalid setting that evaluation uses."""
        problems = self._evaluation_problems()
        if problems:
            raise ValueError("invalid evaluation settings: " + "; ".join(problems))

    def validate(self) -> None:
        """Raise ValueError naming each invalid setting of a training run."""
        problems = self._evaluation_problems() + self._training_problems()
        if problems:
            raise ValueError("invalid training settings: " + "; ".join(problems))

    def _evaluation_problems(self) -> list[str]:
        problems = []
        if not self.embed_pt and not self.meta_json:
            problems.append("--embed_pt and --meta_json are required")
        elif not self.embed_pt or not self.meta_json:
            problems.append(f"--{'embed_pt' if not self.embed_pt else 'meta_json'} is required")
        if str(self.dataset).upper() not in DATASETS:
            problems.append(f"--dataset {self.dataset!r} must be REDDIT or PRISM")
        if not (self.seen_train_limit == -1 or self.seen_train_limit >= 1):
            problems.append(f"--seen_train_limit {self.seen_train_limit} must be -1 (keep all pairs) or at least 1")
        if not (self.unseen_train_limit == -1 or self.unseen_train_limit >= 0):
            problems.append(f"--unseen_train_limit {self.unseen_train_limit} must be -1 (keep all pairs) or at least 0")
        problems += _positive_rate_problems("inner_lr", self.inner_lr)
        if self.eval_inner_epochs < 0:
            problems.append(f"--eval_inner_epochs {self.eval_inner_epochs} must be zero or positive")
        if self.score_threshold is not None and not math.isfinite(self.score_threshold):
            problems.append(f"--score_threshold {self.score_threshold} must be a finite number")
        return problems

    def _training_problems(self) -> list[str]:
        problems = []
        if not self.hidden_layers or min(self.hidden_layers) < 1:
            sizes = " ".join(str(size) for size in self.hidden_layers) or "(none)"
            problems.append(f"--hidden_layers {sizes} must list at least one layer size, each at least 1")
        problems += _positive_rate_problems("meta_lr", self.meta_lr)
        if self.train_inner_epochs < 0:
            problems.append(f"--train_inner_epochs {self.train_inner_epochs} must be zero or positive")
        if self.tasks_per_batch < 1:
            problems.append(f"--tasks_per_batch {self.tasks_per_batch} must be at least 1")
        if self.epochs < 1:
            problems.append(f"--epochs {self.epochs} must be at least 1")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"--warmup_ratio {self.warmup_ratio} must lie in [0, 1)")
        if not 0 < self.val_ratio < 1:
            problems.append(f"--val_ratio {self.val_ratio} must lie strictly between 0 and 1")
        if not 0 <= self.rpo_ratio <= 1:
            problems.append(f"--rpo_ratio {self.rpo_ratio} must lie in [0, 1]")
        if not math.isfinite(self.rpo_gamma):
            problems.append(f"--rpo_gamma {self.rpo_gamma} must be a finite number")
        if self.log_freq < 1:
            problems.append(f"--log_freq {self.log_freq} must be at least 1")
        if self.save_freq < 0:
            problems.append(f"--save_freq {self.save_freq} must be zero (no periodic checkpoints) or positive")
        if self.select_on not in SELECT_ON:
            problems.append(f"--select_on {self.select_on!r} must be one of {', '.join(SELECT_ON)}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            problems.append(f"--grad_clip {self.grad_clip} must be a finite number >= 0 (0 turns clipping off)")
        return problems


def _positive_rate_problems(name: str, value: float) -> list[str]:
    if math.isfinite(value) and value > 0:
        return []
    return [f"--{name} {value} must be a finite number above 0 (the published runs use 5e-3 or 1e-3)"]


# Published settings. The published scripts use seed 42, which is also this project's default.
PRESETS: dict[str, dict] = {
    "reddit150": dict(dataset="REDDIT", seen_train_limit=150, unseen_train_limit=50, hidden_layers=[2], use_bias=False,
                      inner_lr=5e-3, meta_lr=5e-3, train_inner_epochs=1, eval_inner_epochs=1, tasks_per_batch=2,
                      epochs=200, warmup_ratio=0.05, val_ratio=0.9, rpo_ratio=0.5, rpo_gamma=0.5),
    "reddit100": dict(dataset="REDDIT", seen_train_limit=100, unseen_train_limit=50, hidden_layers=[2], use_bias=False,
                      inner_lr=5e-3, meta_lr=5e-3, train_inner_epochs=1, eval_inner_epochs=1, tasks_per_batch=2,
                      epochs=200, warmup_ratio=0.05, val_ratio=0.9, rpo_ratio=0.5, rpo_gamma=0.5),
    "prism": dict(dataset="PRISM", seen_train_limit=-1, unseen_train_limit=-1, hidden_layers=[2], use_bias=False,
                  inner_lr=1e-3, meta_lr=1e-3, train_inner_epochs=1, eval_inner_epochs=1, tasks_per_batch=2,
                  epochs=200, warmup_ratio=0.05, val_ratio=0.9, rpo_ratio=0.5, rpo_gamma=0.5),
}


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite, so the run stopped."""


def resolve_device(name: str) -> torch.device:
    """Return the torch device for a `--device` value, or raise ValueError naming the value and the choices."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device name; use {DEVICE_CHOICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r} is not supported; use {DEVICE_CHOICES}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"--device {name} names GPU {device.index}, but this machine has {count}; use cuda:0 to cuda:{count - 1}")
    return device


# ----------------------------------------------------------------------------- checks before the first write


@dataclass
class TrainingInputs:
    """Settings, device, data and starting model of a run, read and checked before the run writes anything."""

    config: TrainConfig  # with the architecture of the `--ckpt` checkpoint, when one is given
    device: torch.device
    data: EmbeddingData
    splits: UserSplits
    model: MRM


def prepare_training(config: TrainConfig, explicit: Collection[str] = ()) -> TrainingInputs:
    """Validate the settings, read the data and load the starting model; write no file.

    `explicit` names the settings the user gave on purpose. When `hidden_layers`
    or `use_bias` is among them and differs from the `--ckpt` checkpoint, that
    is an error. Otherwise the returned config takes the checkpoint's architecture.

    Raises:
        ValueError: invalid settings, data or checkpoint (DataError and CheckpointError are ValueErrors).
        mrm.hub.HubError: the checkpoint could not be found or downloaded.
    """
    config.validate()
    device = resolve_device(config.device)
    check_output_path(config)
    torch.manual_seed(config.seed)

    # Data: the embedding tensor stays in its stored dtype; rows are cast to fp32 when used.
    data = read_embedding_files(config.embed_pt, config.meta_json)
    splits = build_user_splits(data, config.seed, config.dataset, config.seen_train_limit, config.unseen_train_limit, config.score_threshold)
    logger.info("%d seen and %d unseen users; %d skipped", len(splits.seen), len(splits.unseen), len(splits.skipped))
    warn_if_no_unseen_users(splits, config.unseen_train_limit)

    # Model: a fresh head seeded as published, or the given checkpoint.
    if config.ckpt:
        from mrm.hub import load_checkpoint

        check_not_run_folder(config.ckpt)
        model = load_checkpoint(config.ckpt)
        config = _with_checkpoint_architecture(config, model, explicit)
    else:
        model = MRM(in_dim=data.hidden_size, hidden_layers=config.hidden_layers, use_bias=config.use_bias)
    if model.in_dim != data.hidden_size:
        raise DataError(
            f"embedding width {data.hidden_size} in {config.embed_pt} does not match the checkpoint's in_dim {model.in_dim}; "
            "embed the data with the reward model the checkpoint was trained on, or train a new head without --ckpt"
        )
    return TrainingInputs(config=config, device=device, data=data, splits=splits, model=model)


def prepare_run(config: TrainConfig, explicit: Collection[str] = ()) -> TrainingInputs:
    """Run every check of `prepare_training`, then clear an earlier run's files from the output folder.

    Nothing is removed unless all checks pass.
    """
    inputs = prepare_training(config, explicit)
    if config.output_path:
        clear_run_files(config.output_path)
    return inputs


def warn_if_no_unseen_users(splits: UserSplits, unseen_train_limit: int) -> None:
    """Log a warning when no unseen user is left to evaluate, so the unseen figures are n/a."""
    if splits.unseen:
        return
    reason = " because --unseen_train_limit 0 leaves them no training pairs" if unseen_train_limit == 0 else ""
    logger.warning("no unseen users are evaluated%s; the unseen accuracy is n/a", reason)


def check_not_run_folder(ckpt: str) -> None:
    """Raise ValueError when `ckpt` is a training run folder, naming the checkpoint folder inside it."""
    folder = Path(ckpt)
    if not folder.is_dir():
        return
    if any(p.is_file() and p.suffix in (".safetensors", ".pt", ".pth", ".bin") for p in folder.iterdir()):
        return
    if (folder / "best" / WEIGHTS_NAME).is_file():
        raise ValueError(
            f"--ckpt {ckpt} is a training run folder, not a checkpoint; "
            f"pass the checkpoint it selected: --ckpt {folder / 'best'}"
        )


def _with_checkpoint_architecture(config: TrainConfig, model: MRM, explicit: Collection[str]) -> TrainConfig:
    """Return `config` with the checkpoint's hidden_layers and use_bias; reject conflicting explicit values."""
    architecture = {"hidden_layers": model.hidden_layers, "use_bias": model.use_bias}
    for name, actual in architecture.items():
        configured = getattr(config, name)
        if name in explicit and configured != actual:
            flag_value = " ".join(str(size) for size in configured) if name == "hidden_layers" else configured
            raise ValueError(
                f"--{name} {flag_value} conflicts with the checkpoint {config.ckpt}, which has {name}={actual}; "
                f"drop --{name} to continue training the checkpoint, or drop --ckpt to train a new head"
            )
        if configured != actual:
            logger.info("training the checkpoint's %s=%s (the settings gave %s)", name, actual, configured)
    return replace(config, **architecture)


@contextlib.contextmanager
def single_cpu_thread(device: torch.device):
    """Run CPU training on one intra-op thread, restoring the previous setting afterwards.

    Each outer step is a few hundred tiny K-dimensional ops. With two OpenMP
    threads on a machine whose cores are busy, those ops slowed down about 30x
    in our runs (spinning threads), while one thread loses little.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- one outer step


@dataclass
class TaskPairs:
    """One task (user) for one epoch: support and query pairs as row indices and as positions.

    `support`/`query` are (chosen rows, rejected rows) of the embedding tensor;
    `support_positions`/`query_positions` index the user's training pairs, and
    so the rows of that user's block in `training_differences`.
    """

    user_index: int
    support: tuple[Tensor, Tensor]
    query: tuple[Tensor, Tensor]
    support_positions: Tensor
    query_positions: Tensor


def task_pairs_for_epoch(user: UserPairs, user_index: int, epoch: int, seed: int, val_ratio: float) -> TaskPairs:
    """Redraw a user's support/query split for `epoch` (counted from 1) with the published rule."""
    support_groups, query_groups = support_query_split(num_groups(user), seed, user_index, epoch, val_ratio)
    support = pairs_in_groups(user, support_groups)
    query = pairs_in_groups(user, query_groups)
    return TaskPairs(
        user_index=user_index,
        support=(user.train_chosen[support], user.train_rejected[support]),
        query=(user.train_chosen[query], user.train_rejected[query]),
        support_positions=support,
        query_positions=query,
    )


def training_differences(embeddings: Tensor, users: list[UserPairs], device: torch.device | str) -> list[Tensor]:
    """Per user, the fp32 embedding differences `chosen - rejected` of their training pairs, `[P_u, H]`.

    Computed once per run into one preallocated buffer (the per-user tensors
    are views of it, so no allocator fragmentation): every outer step then
    reads these instead of converting bf16 rows of the full tensor again.
    """
    sizes = [user.num_train for user in users]
    buffer = torch.empty(sum(sizes), embeddings.shape[1], dtype=torch.float32, device=device)
    views = list(torch.split(buffer, sizes))
    for user, view in zip(users, views):
        view.copy_(embeddings[user.train_chosen])
        view.sub_(embeddings[user.train_rejected].to(device))  # promoted to fp32 before subtracting
    return views


def group_meta_objective(
    model: MRM,
    differences: list[Tensor],
    tasks: list[TaskPairs],
    inner_steps: int,
    inner_lr: float,
    rpo_ratio: float,
    rpo_gamma: float,
) -> tuple[Tensor, Tensor]:
    """RPO over the query losses of a group of tasks after differentiable inner adaptation.

    `differences` comes from `training_differences` for the seen users that
    `TaskPairs.user_index` refers to. Returns the objective (a scalar whose
    gradient reaches every parameter) and the per-task query losses `[T]`.
    """
    # Support and query sets together cover a user's training pairs, so the margins of the
    # whole block are computed in place (no copy of the wide rows) and then indexed.
    user_margins = [model.base_reward_margins(differences[t.user_index]) for t in tasks]  # [(P_u, K)], with grad
    support_bases, support_mask = pad_margin_bases([m[t.support_positions] for m, t in zip(user_margins, tasks)])  # (T, P, K), (T, P)
    query_bases, query_mask = pad_margin_bases([m[t.query_positions] for m, t in zip(user_margins, tasks)])

    adapted = inner_loop(support_bases, support_mask, model.shared_weight, inner_steps, inner_lr, create_graph=True)
    query_losses = bradley_terry_loss(margins_from_logits(query_bases, adapted.logits), query_mask)  # (T,)
    return rpo_objective(query_losses, rpo_ratio, rpo_gamma), query_losses


def schedule_length(num_seen: int, epochs: int, tasks_per_batch: int) -> int:
    """Return the learning-rate schedule's length in outer steps, as the published code computes it.

    That is seen users x epochs // tasks_per_batch. With a final partial group
    in each epoch a run takes a few more steps, where the cosine rises slightly
    above 0 again, as in the published runs.
    """
    return max(1, num_seen * epochs // tasks_per_batch)


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up from 0 to 1, then cosine decay to 0 at `total_steps`.

    The same curve as the published runs, which use transformers'
    `get_cosine_schedule_with_warmup`: the first step runs at factor 0, and
    steps past `total_steps` follow the cosine back up from 0.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    model: MRM  # the selected (best) model
    history: list[dict]
    results: dict
    output_path: Path | None


def meta_train(
    config: TrainConfig, callback: Callable[[dict], None] | None = None, inputs: TrainingInputs | None = None
) -> TrainResult:
    """Meta-train MRM as configured, evaluating every `log_freq` epochs, and return the selected model.

    Settings, data and the `--ckpt` checkpoint are checked before the run
    folder is touched (`prepare_run`). A caller that acts between those checks
    and the first write (the command line opens train.log there) calls
    `prepare_run` itself and passes its result as `inputs`.

    `callback` receives a dict per event: `{"event": "epoch", ...}` after each
    epoch and `{"event": "eval", ...}` with the metrics row after each evaluation.

    Raises:
        TrainingDivergedError: the training loss became NaN or infinite.
    """
    if inputs is None:
        inputs = prepare_run(config)
    config = inputs.config
    run = RunFolder(config.output_path)
    run.write_json("config.json", asdict(config))
    run.progress("running", 0, config.epochs, "starting")
    try:
        with single_cpu_thread(inputs.device):
            return _meta_train(config, inputs, run, callback or (lambda event: None))
    except KeyboardInterrupt:
        run.progress("cancelled", None, config.epochs, "cancelled by the user")
        raise
    except Exception as error:
        run.progress("failed", None, config.epochs, f"{type(error).__name__}: {error}")
        raise


def _meta_train(config: TrainConfig, inputs: TrainingInputs, run: RunFolder, callback: Callable[[dict], None]) -> TrainResult:
    device, splits, model = inputs.device, inputs.splits, inputs.model
    embeddings = inputs.data.embeddings if device.type == "cpu" else inputs.data.embeddings.to(device)
    model.to(device).train()

    total_steps = schedule_length(len(splits.seen), config.epochs, config.tasks_per_batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.meta_lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, int(config.warmup_ratio * total_steps)))
    extra = {"training": {k: v for k, v in asdict(config).items() if k not in ("embed_pt", "meta_json", "output_path", "device", "overwrite")}}
    record = read_encoder_record(config.embed_pt)
    if record is not None:  # checkpoints then name the encoder their embeddings need
        extra.update(encoder_id=record["encoder_id"], encoder_revision=record.get("encoder_revision"))

    differences = training_differences(embeddings, splits.seen, device)
    history: list[dict] = []
    best_score, best_epoch, best_state = -math.inf, 0, copy.deepcopy(model.state_dict())
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_loss = _train_one_epoch(model, differences, splits.seen, epoch, config, optimizer, schedule)
        if not math.isfinite(epoch_loss):
            raise TrainingDivergedError(
                f"the training loss became {epoch_loss} at epoch {epoch}, so training stopped; "
                f"lower --inner_lr ({config.inner_lr}) or --meta_lr ({config.meta_lr}) and start again"
            )
        callback({"event": "epoch", "epoch": epoch, "epochs": config.epochs, "train_loss": epoch_loss})
        run.progress("running", epoch, config.epochs, f"epoch {epoch}: train loss {epoch_loss:.4f}")

        if epoch % config.log_freq == 0 or epoch == config.epochs:
            row = _evaluate_epoch(model, embeddings, splits, config, epoch, epoch_loss, time.perf_counter() - started)
            history.append(row)
            run.write_metrics(history)
            callback({"event": "eval", **row})
            logger.info("epoch %d: loss %.4f seen %.4f unseen %.4f overall %.4f", epoch, epoch_loss, row["seen"], row["unseen"], row["overall"])
            if row["selection"] > best_score or config.select_on == "last":
                best_score, best_epoch, best_state = row["selection"], epoch, copy.deepcopy(model.state_dict())
                run.save_model(model, "best", {**extra, "epoch": epoch})
        if config.save_freq and epoch % config.save_freq == 0:
            run.save_model(model, f"checkpoints/epoch_{epoch:04d}", {**extra, "epoch": epoch})

    # Final report on the selected epoch's model.
    model.load_state_dict(best_state)
    model.eval()
    report = evaluate(model, embeddings, splits.seen, splits.unseen, config.inner_lr, config.eval_inner_epochs)
    results = {
        **report.to_results(),
        "selected_on": _selection_label(config.select_on),
        "best_epoch": best_epoch,
        "selection_score": best_score,
        "skipped_users": splits.skipped,
        "protocol": {"inner_lr": config.inner_lr, "eval_inner_epochs": config.eval_inner_epochs, "seed": config.seed},
    }
    run.write_json("results.json", results)
    if run.path:
        write_per_user_csv(report.per_user, run.path / "per_user.csv")
    run.progress("done", config.epochs, config.epochs,
                 f"finished: epoch {best_epoch} selected on {config.select_on}; test accuracy overall {results['overall']:.4f}")
    return TrainResult(model=model, history=history, results=results, output_path=run.path)


def _train_one_epoch(model, differences, seen, epoch, config, optimizer, schedule) -> float:
    # Task order is reshuffled every epoch; the support/query split is redrawn per user.
    order = list(range(len(seen)))
    random.Random(config.seed + epoch).shuffle(order)
    losses = []
    for start in range(0, len(order), config.tasks_per_batch):
        group = order[start : start + config.tasks_per_batch]
        tasks = [task_pairs_for_epoch(seen[i], i, epoch, config.seed, config.val_ratio) for i in group]
        objective, task_losses = group_meta_objective(
            model, differences, tasks, config.train_inner_epochs, config.inner_lr, config.rpo_ratio, config.rpo_gamma
        )
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(task_losses.detach())
    return float(torch.cat(losses).mean())


def _evaluate_epoch(model, embeddings, splits, config, epoch, train_loss, elapsed) -> dict:
    model.eval()
    report = evaluate(model, embeddings, splits.seen, splits.unseen, config.inner_lr, config.eval_inner_epochs)
    row = {"epoch": epoch, "train_loss": train_loss, **{k: report.adapted[k] for k in ("seen", "unseen", "overall", "worst10")}}
    if config.select_on == "val":
        # Unseen users' training pairs are never meta-trained on, so adapting on part of them
        # and scoring the rest measures generalisation without touching any test pair.
        holdout_users = splits.unseen or splits.seen
        row["val"] = holdout_accuracy(model, embeddings, holdout_users, config.inner_lr, config.eval_inner_epochs)
        row["selection"] = row["val"]
    elif config.select_on == "test":
        row["selection"] = row["overall"]
    else:
        row["selection"] = float(epoch)
    row["elapsed_s"] = round(elapsed, 3)
    model.train()
    return row


def _selection_label(select_on: str) -> str:
    return {
        "val": "val: held-out training pairs of unseen users (test pairs untouched)",
        "test": "test: best overall test accuracy over evaluated epochs (published protocol, optimistic)",
        "last": "last: final epoch",
    }[select_on]
