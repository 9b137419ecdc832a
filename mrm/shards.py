"""Shard folders of `python -m mrm embed`: chunks of embeddings written as they finish.

A run writes its chunks to `PREFIX.shards/` with a manifest that names the
encoder, a digest of the inputs and the chunk size. An interrupted run
resumes from the chunks on disk, and a run with other inputs never mixes
with them. Several processes (`accelerate launch`) each embed their share of
the chunks; the main process merges them at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mrm.fileio import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


class ShardError(RuntimeError):
    """A shard folder that belongs to another run or is incomplete."""


def shard_dir_for(prefix: str | Path) -> Path:
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ".shards")


def chunk_path(shard_dir: Path, chunk: int) -> Path:
    return shard_dir / f"chunk_{chunk:06d}.pt"


def num_chunks(num_conversations: int, chunk_size: int) -> int:
    return (num_conversations + chunk_size - 1) // chunk_size


def inputs_digest(conversations: Sequence[tuple]) -> str:
    """Return the SHA-256 of the conversations to embed, in order."""
    digest = hashlib.sha256()
    for prompt, response in conversations:
        digest.update(json.dumps([prompt, response], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def make_manifest(encoder_id: str, encoder_revision: str | None, conversations: Sequence[tuple], chunk_size: int) -> dict:
    """Return the manifest of a shard folder: the encoder, a digest of the inputs and the chunk size."""
    return {
        "version": MANIFEST_VERSION,
        "encoder_id": encoder_id,
        "encoder_revision": encoder_revision,
        "inputs_sha256": inputs_digest(conversations),
        "num_conversations": len(conversations),
        "chunk_size": chunk_size,
    }


def prepare_shard_dir(shard_dir: Path, manifest: dict, overwrite: bool = False) -> None:
    """Create `shard_dir` with `manifest`, or check that an existing one matches it.

    A folder that contains no chunk gets `manifest` in place of its own,
    because nothing would be lost. A run that failed before its first chunk
    (for example, the encoder did not load) leaves such a folder. A folder with chunks written
    for another encoder or other inputs raises `ShardError` unless `overwrite`
    is set, in which case it is deleted and started afresh.
    """
    manifest_file = shard_dir / MANIFEST_NAME
    if shard_dir.exists() and not shard_dir.is_dir():
        raise ShardError(f"{shard_dir} is a file, but the shard folder goes there; move that file or choose another --out")
    if shard_dir.is_dir() and not any(shard_dir.glob("chunk_*.pt")):
        if manifest_file.is_file():
            logger.info("reusing %s: it contains no chunks, so its manifest is replaced", shard_dir)
        write_json_atomic(manifest_file, manifest)
        return
    if manifest_file.is_file():
        try:
            existing = json.loads(manifest_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            existing = {}
        if existing == manifest:
            total = num_chunks(manifest["num_conversations"], manifest["chunk_size"])
            done = sum(chunk_path(shard_dir, chunk).is_file() for chunk in range(total))
            logger.info("resuming in %s: %d chunks already embedded", shard_dir, done)
            return
        differences = [
            f"{key} {existing.get(key)!r} there, {value!r} now" for key, value in manifest.items() if existing.get(key) != value
        ]
        if not overwrite:
            raise ShardError(
                f"{shard_dir} contains chunks from another run ({'; '.join(differences)}). "
                "Delete that folder, pass --overwrite_shards, or choose another --out."
            )
        logger.warning("deleting %s: it was written for another run (%s)", shard_dir, "; ".join(differences))
        shutil.rmtree(shard_dir)
    elif shard_dir.exists() and any(shard_dir.iterdir()):
        if not overwrite:
            raise ShardError(
                f"{shard_dir} exists without a {MANIFEST_NAME}, so its chunks cannot be checked. "
                "Delete that folder, pass --overwrite_shards, or choose another --out."
            )
        shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(manifest_file, manifest)


def chunks_for_process(total_chunks: int, process_index: int, num_processes: int) -> list[int]:
    """Return the chunks that process `process_index` of `num_processes` embeds: every num_processes-th one."""
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index must be in [0, {num_processes}), got {process_index}")
    return list(range(process_index, total_chunks, num_processes))


def prompt_text(prompt: str | list[dict]) -> str | list[dict]:
    """Return the prompt given to the encoder: a string, or PRISM's list of chat messages unchanged.

    The reward-model encoder templates a message list as chat turns, as the
    published PRISM embeddings were made; the demo encoder flattens it.
    """
    return prompt


def embed_shards(
    conversations: Sequence[tuple],
    encoder,
    shard_dir: Path,
    chunk_size: int,
    process_index: int = 0,
    num_processes: int = 1,
    batch_size: int = 16,
    progress: bool = False,
) -> list[int]:
    """Embed this process's chunks that are not on disk yet; return the chunks it embedded.

    Each chunk is saved atomically as `chunk_NNNNNN.pt` containing
    `{"start", "stop", "embeddings" [n, H] float32, "scores" [n] or None, "num_truncated"}`,
    so an interrupted run leaves only complete chunks behind.
    """
    mine = chunks_for_process(num_chunks(len(conversations), chunk_size), process_index, num_processes)
    todo = [chunk for chunk in mine if not chunk_path(shard_dir, chunk).is_file()]
    logger.info(
        "process %d of %d: %d chunks to embed, %d already on disk",
        process_index, num_processes, len(todo), len(mine) - len(todo),
    )

    total = sum(min(len(conversations), (chunk + 1) * chunk_size) - chunk * chunk_size for chunk in todo)
    done = []
    # The context closes the progress bar on an interrupt too, so a message printed after it starts on its own line.
    with tqdm(total=total, desc="embedding", unit="conv", disable=not progress) as bar:
        for chunk in todo:
            start, stop = chunk * chunk_size, min(len(conversations), (chunk + 1) * chunk_size)
            prompts = [prompt_text(prompt) for prompt, _ in conversations[start:stop]]
            responses = [response for _, response in conversations[start:stop]]
            batch = encoder.encode(prompts, responses, batch_size=batch_size, progress=False)
            record = {
                "start": start,
                "stop": stop,
                "embeddings": batch.embeddings.to(torch.float32).cpu().contiguous(),  # [n, H]
                "scores": None if batch.scores is None else batch.scores.to(torch.float32).cpu(),  # [n]
                "num_truncated": int(batch.num_truncated),
            }
            with atomic_path(chunk_path(shard_dir, chunk)) as tmp:
                torch.save(record, tmp)
            done.append(chunk)
            bar.update(stop - start)
    return done


def merge_shards(
    shard_dir: Path, num_conversations: int, chunk_size: int, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor | None, int]:
    """Join all chunks in order; return (embeddings [N, H] in `dtype`, scores [N] or None, truncated count).

    The output tensor is allocated once and filled chunk by chunk, so peak
    memory is the output plus one chunk. Raises `ShardError` naming the first
    missing or inconsistent chunk.
    """
    if num_conversations < 1:
        raise ShardError(f"nothing to merge in {shard_dir}: the dataset has no conversations")
    merged: Tensor | None = None
    scores: Tensor | None = torch.zeros(num_conversations)  # [N]
    truncated = 0
    for chunk in range(num_chunks(num_conversations, chunk_size)):
        path = chunk_path(shard_dir, chunk)
        if not path.is_file():
            raise ShardError(f"chunk {chunk} is missing from {shard_dir}; rerun the same command to embed it")
        record = torch.load(path, map_location="cpu", weights_only=True)
        expected = (chunk * chunk_size, min(num_conversations, (chunk + 1) * chunk_size))
        rows = record["embeddings"].shape[0]
        if (record["start"], record["stop"]) != expected or rows != expected[1] - expected[0]:
            raise ShardError(
                f"{path} covers conversations {record['start']}..{record['stop']} with {rows} rows; "
                f"expected {expected[0]}..{expected[1]}. Delete {shard_dir} and rerun."
            )
        if merged is None:
            merged = torch.empty(num_conversations, record["embeddings"].shape[1], dtype=dtype)  # [N, H]
        if record["embeddings"].shape[1] != merged.shape[1]:
            raise ShardError(
                f"{path} has embeddings of width {record['embeddings'].shape[1]}, earlier chunks {merged.shape[1]}. "
                f"Delete {shard_dir} and rerun."
            )
        merged[expected[0] : expected[1]] = record["embeddings"].to(dtype)
        if record["scores"] is None:
            scores = None
        elif scores is not None:
            scores[expected[0] : expected[1]] = record["scores"]
        truncated += record["num_truncated"]
    return merged, scores, truncated
