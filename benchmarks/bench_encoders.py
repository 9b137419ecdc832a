"""Benchmark batched against one-at-a-time embedding, and cache hits, on the CPU.

Encoders: the tiny Llama reward model from `tests/tiny_models.py` and the
MiniLM demo encoder. Each measurement embeds the same 32 generated
(prompt, response) pairs, two responses per prompt as in preference data,
repeated several times; the median is reported. Two length mixes are timed:
posts of up to 200 words, where the model's arithmetic dominates, and posts
of up to 20 words, where per-call overhead dominates.

Run from the repository root:

    python -m benchmarks.bench_encoders [--runs 5] [--threads 1] [--output benchmarks/RESULTS_encoders.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from mrm.encoders import DEMO_ENCODER, Encoder, load_encoder
from mrm.fileio import write_text_atomic
from tests.tiny_models import build_tiny_reward_model, make_pairs


@dataclass
class BenchConfig:
    """Settings of the encoder benchmark."""

    runs: int = field(
        default=5, metadata={"help": "timed repetitions per measurement; the median is reported"}
    )
    num_pairs: int = field(default=32, metadata={"help": "pairs per measurement"})
    batch_sizes: str = field(
        default="8,32", metadata={"help": "comma-separated batch sizes of the batched runs"}
    )
    max_batch_tokens: int = field(
        default=2048,
        metadata={"help": "token budget of one extra batched run at the largest batch size; 0 skips it"},
    )
    threads: int = field(default=0, metadata={"help": "torch CPU threads; 0 keeps torch's default"})
    seed: int = field(default=0, metadata={"help": "seed of the generated pairs"})
    output: Path = field(
        default=Path("benchmarks/RESULTS_encoders.md"), metadata={"help": "Markdown file the results go to"}
    )


# Length mixes: name and maximum prompt length in words (responses: up to a third).
LENGTH_MIXES = (("posts up to 200 words", 200), ("posts up to 20 words", 20))


def time_interleaved(functions: dict, runs: int) -> dict:
    """Return each function's wall-clock times over `runs` rounds, after one warm-up call each.

    Every round calls all functions once, so a change in machine load during
    the benchmark affects all of them alike and per-round ratios stay fair.
    """
    for function in functions.values():
        function()
    times = {name: [] for name in functions}
    for _ in range(runs):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return times


def measure(encoder: Encoder, cached_encoder: Encoder, max_words: int, config: BenchConfig) -> list[dict]:
    """Time one-at-a-time, batched and cache-hit embedding of the same pairs; one row per batching."""
    prompts, responses = make_pairs(
        config.num_pairs, seed=config.seed, max_words=max_words, responses_per_prompt=2
    )
    batch_sizes = [int(size) for size in config.batch_sizes.split(",")]
    settings = [(size, None) for size in batch_sizes]
    if config.max_batch_tokens > 0:
        settings.append((max(batch_sizes), config.max_batch_tokens))

    def run_batched(batch_size: int, max_batch_tokens: int | None) -> None:
        encoder.max_batch_tokens = max_batch_tokens
        encoder.encode(prompts, responses, batch_size=batch_size)
        encoder.max_batch_tokens = None

    functions = {
        "single": lambda: [encoder.encode([p], [r], batch_size=1) for p, r in zip(prompts, responses)]
    }
    for setting in settings:
        functions[setting] = lambda setting=setting: run_batched(*setting)
    cached_encoder.encode(prompts, responses)  # fill the cache
    functions["cache_hit"] = lambda: cached_encoder.encode(prompts, responses)
    times = time_interleaved(functions, config.runs)

    rows = []
    for batch_size, max_batch_tokens in settings:
        batched = times[(batch_size, max_batch_tokens)]
        rows.append(
            {
                "batching": f"{batch_size}"
                if max_batch_tokens is None
                else f"{batch_size}, max {max_batch_tokens} tokens",
                "single": statistics.median(times["single"]),
                "batched": statistics.median(batched),
                "speed_up": statistics.median(one / many for one, many in zip(times["single"], batched)),
                "cache_hit": statistics.median(times["cache_hit"]),
            }
        )
    return rows


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch threads: {torch.get_num_threads()}, "
        f"Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}"
    )


def format_report(results: list[dict], config: BenchConfig, command: str) -> str:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    lines = [
        "# Encoder throughput on the CPU",
        "",
        f"Machine: {machine_description()}; load average at the end of the run: {load}.",
        "",
        f"Command: `{command}`",
        "",
        f"Each row embeds the same {config.num_pairs} generated (prompt, response) pairs, two responses "
        "per prompt, with the embedding cache disabled except in the cache-hit column. Responses are up "
        f"to a third of the prompt's maximum length. Each of {config.runs} rounds, after one warm-up "
        "round, times every variant once; the table gives medians over rounds. Speed-up is the median "
        "over rounds of one-at-a-time time divided by batched time.",
        "",
        "| encoder | length mix | one at a time (s) | batching | batched (s) | speed-up | cache hit (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results:
        lines.append(
            f"| {row['encoder']} | {row['mix']} | {row['single']:.3f} | {row['batching']} | "
            f"{row['batched']:.3f} | {row['speed_up']:.1f}x | {1000 * row['cache_hit']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = BenchConfig()
    for name, spec in BenchConfig.__dataclass_fields__.items():
        parser.add_argument(
            f"--{name}",
            type=type(getattr(defaults, name)),
            default=getattr(defaults, name),
            help=spec.metadata["help"],
        )
    config = BenchConfig(**vars(parser.parse_args(argv)))
    if config.threads > 0:
        torch.set_num_threads(config.threads)

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = build_tiny_reward_model(Path(scratch) / "tiny_rm")
        for encoder_label, encoder_name in (
            ("tiny Llama reward model", str(model_dir)),
            ("demo (MiniLM)", DEMO_ENCODER),
        ):
            encoder = load_encoder(encoder_name, device="cpu")
            cached_encoder = load_encoder(encoder_name, device="cpu", cache_dir=Path(scratch) / "cache")
            for mix_label, max_words in LENGTH_MIXES:
                for row in measure(encoder, cached_encoder, max_words, config):
                    results.append({"encoder": encoder_label, "mix": mix_label, **row})

    command = "python -m benchmarks.bench_encoders " + " ".join(argv if argv is not None else sys.argv[1:])
    report = format_report(results, config, command.strip())
    write_text_atomic(config.output, report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
