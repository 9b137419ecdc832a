"""Benchmark: vectorized meta-training and evaluation against the plain per-user loop.

The population is shaped like Reddit TL;DR: 60 users, 4096-d bf16
embeddings, 450 pairs per user (300 train, 150 test), training caps 150 for
seen and 50 for unseen users, published settings otherwise. Each measurement
runs in a fresh subprocess so peak memory is its own.

A third mode, `floor`, times only the arithmetic that any fp32
implementation of the vectorized path must do: per outer step, the forward
and backward products of each task user's pair differences with the
base-reward weights (no autograd, no inner loop, no optimizer), and per
evaluation, converting the distinct rows the users touch and multiplying them
by the weights. The per-user loop's time divided by the floor is the largest
speed-up this machine allows that path.

    python -m benchmarks.bench_core --repeats 3 --out benchmarks/results_core.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def generate(prefix: Path, users: int, dim: int, train_pairs: int, test_pairs: int) -> None:
    synthetic = load_module("synthetic", ROOT / "tests" / "synthetic.py")
    synthetic.make_population(prefix, num_users=users, dim=dim, train_pairs=train_pairs, test_pairs=test_pairs,
                              seed=0, dtype=torch.bfloat16)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it is not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_floor(model, differences, seen, epoch, config) -> None:
    """Time-only stand-in for one epoch: the unavoidable products of every outer step, nothing else.

    Each task user's differences `[P_u, H]` are multiplied by the weights
    `[K, H]` (forward) and a `[P_u, K]` gradient by the differences (backward),
    in the same task order as training. The results are discarded.
    """
    from mrm.meta_train import task_pairs_for_epoch

    weight = model.layers[0].weight.detach()
    order = list(range(len(seen)))
    random.Random(config.seed + epoch).shuffle(order)
    with torch.no_grad():
        for start in range(0, len(order), config.tasks_per_batch):
            group = order[start : start + config.tasks_per_batch]
            tasks = [task_pairs_for_epoch(seen[i], i, epoch, config.seed, config.val_ratio) for i in group]
            for task in tasks:
                block = differences[task.user_index]
                margins = block @ weight.T  # (P_u, K)
                margins.T @ block  # (K, H), shaped like the weight gradient


def evaluation_floor(model, embeddings, users) -> None:
    """Time-only stand-in for one evaluation: convert the distinct rows the users touch and multiply them by the weights."""
    from mrm.evaluate import base_rewards_for_rows

    parts = [part for user in users for part in (user.train_chosen, user.train_rejected, user.test_chosen, user.test_rejected)]
    base_rewards_for_rows(model, embeddings, torch.unique(torch.cat(parts)))


def measure(prefix: Path, mode: str, epochs: int, device_name: str = "cpu") -> dict:
    """Run inside a fresh process: time `epochs` of training and full evaluations on `device_name`."""
    from mrm.data import build_user_splits, read_embedding_files
    from mrm.evaluate import evaluate
    from mrm.meta_train import PRESETS, TrainConfig, _train_one_epoch, cosine_with_warmup, single_cpu_thread, training_differences
    from mrm.model import MRM

    reference = load_module("reference_loop", ROOT / "tests" / "reference_loop.py")
    # A process's first torch optimizer imports torch's compiler stack (about 800 modules and
    # 70 MB of resident memory with torch 2.13). That is code, not data, so it is loaded before
    # the baseline is taken.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    baseline_rss = peak_rss_mb()
    config = TrainConfig(embed_pt=f"{prefix}.pt", meta_json=f"{prefix}.json", **PRESETS["reddit150"])
    data = read_embedding_files(config.embed_pt, config.meta_json)
    splits = build_user_splits(data, config.seed, config.dataset, config.seen_train_limit, config.unseen_train_limit)
    device = torch.device(device_name)
    embeddings = data.embeddings if device.type == "cpu" else data.embeddings.to(device)
    torch.manual_seed(config.seed)
    model = MRM(data.hidden_size, config.hidden_layers, config.use_bias).to(device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    optimizer = torch.optim.Adam(model.parameters(), lr=config.meta_lr)
    total = -(-len(splits.seen) // config.tasks_per_batch) * epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total, int(0.05 * total)))

    with single_cpu_thread(device):
        start = time.perf_counter()
        if mode != "per_user_loop":  # the one-off difference precomputation is part of the timed work
            differences = training_differences(embeddings, splits.seen, device)
        for epoch in range(1, epochs + 1):
            if mode == "floor":
                training_floor(model, differences, splits.seen, epoch, config)
            elif mode == "vectorized":
                _train_one_epoch(model, differences, splits.seen, epoch, config, optimizer, schedule)
            else:
                reference.reference_train_epoch(model, embeddings, splits.seen, epoch, config, optimizer, schedule)
        synchronize()
        train_s = time.perf_counter() - start

    def evaluate_once() -> float:
        start = time.perf_counter()
        if mode == "floor":
            evaluation_floor(model, embeddings, splits.all_users)
        elif mode == "vectorized":
            evaluate(model, embeddings, splits.seen, splits.unseen, config.inner_lr, config.eval_inner_epochs)
        else:
            for user in splits.all_users:
                reference.reference_evaluate_user(model, embeddings, user, config.eval_inner_epochs, config.inner_lr)
        synchronize()
        return time.perf_counter() - start

    # The first evaluation also faults the test rows in from the memory-mapped file.
    cold_eval_s = evaluate_once()
    eval_s = statistics.median(evaluate_once() for _ in range(5))
    row = {"mode": mode, "epochs": epochs, "train_s": train_s, "eval_s": eval_s, "cold_eval_s": cold_eval_s,
           "peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": baseline_rss}
    if device.type == "cuda":
        row["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def run_child(prefix: Path, mode: str, epochs: int, device: str) -> dict:
    completed = subprocess.run([sys.executable, "-m", "benchmarks.bench_core", "--child", mode, "--prefix", str(prefix),
                                "--epochs", str(epochs), "--device", device],
                               capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode; medians are reported")
    parser.add_argument("--epochs", type=int, default=50, help="meta-training epochs per run")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=None, help="write the medians as JSON here")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]; both paths run on it (NOTE: not yet run on CUDA)")
    parser.add_argument("--child", choices=["vectorized", "per_user_loop", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--prefix", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.prefix, args.child, args.epochs, args.device)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "reddit_like"
        # Generated in a child so this process stays small while the measured children run.
        subprocess.run([sys.executable, "-c", f"from benchmarks.bench_core import generate; from pathlib import Path; "
                        f"generate(Path({str(prefix)!r}), {args.users}, {args.dim}, 300, 150)"], check=True, cwd=ROOT)
        file_mb = Path(f"{prefix}.pt").stat().st_size / 2**20
        runs = {"vectorized": [], "per_user_loop": [], "floor": []}
        for _ in range(args.repeats):  # interleaved, so both modes see the same machine load
            for mode in runs:
                runs[mode].append(run_child(prefix, mode, args.epochs, args.device))
                print(json.dumps(runs[mode][-1]), flush=True)

    def median(mode, key):
        return statistics.median(r[key] for r in runs[mode])

    summary = {
        "device": args.device,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads available, "
                   f"torch {torch.__version__}, Python {platform.python_version()}",
        "command": " ".join(["python -m benchmarks.bench_core", *sys.argv[1:]]),
        "repeats": args.repeats,
        "embedding_file_mb": round(file_mb, 1),
        "train_s": {mode: round(median(mode, "train_s"), 3) for mode in runs},
        "eval_s": {mode: round(median(mode, "eval_s"), 3) for mode in runs},
        "cold_eval_s": {mode: round(median(mode, "cold_eval_s"), 3) for mode in runs},
        "train_speedup": round(median("per_user_loop", "train_s") / median("vectorized", "train_s"), 1),
        "eval_speedup": round(median("per_user_loop", "eval_s") / median("vectorized", "eval_s"), 1),
        # The largest speed-up over the per-user loop that the floor's arithmetic leaves room for.
        "train_speedup_bound": round(median("per_user_loop", "train_s") / median("floor", "train_s"), 1),
        "eval_speedup_bound": round(median("per_user_loop", "eval_s") / median("floor", "eval_s"), 1),
        "vectorized_peak_rss_mb": round(median("vectorized", "peak_rss_mb"), 1),
        "vectorized_rss_after_imports_mb": round(median("vectorized", "rss_after_imports_mb"), 1),
    }
    summary["vectorized_peak_over_file"] = round(
        (summary["vectorized_peak_rss_mb"] - summary["vectorized_rss_after_imports_mb"]) / file_mb, 2)
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
