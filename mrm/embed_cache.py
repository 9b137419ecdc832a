"""On-disk cache of conversation embeddings, one SQLite file per encoder.

Each encoder gets its own folder under the cache root, named after a hash of
everything that determines its output (model id, revision, dtype, maximum
length, feature recipe). Inside, `embeddings.sqlite` maps the SHA-256 of the
exact text the encoder embeds to the float32 embedding, the model's score and
whether the input was truncated. SQLite commits are atomic and safe across
processes, so an interrupted run leaves either a complete row or no row.
The folder's `encoder.json` and a copy of the key inside the database are
checked on open, so one encoder never reads rows written by another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mrm.fileio import write_json_atomic

logger = logging.getLogger(__name__)

DATABASE_NAME = "embeddings.sqlite"
KEY_FILE_NAME = "encoder.json"
SQLITE_TIMEOUT_S = 60.0


class EmbeddingCacheError(RuntimeError):
    """A cache folder that belongs to another encoder or cannot be read."""


@dataclass(frozen=True)
class CachedEmbedding:
    """One cached row: the embedding, the model's score (NaN if none), truncation flag."""

    embedding: Tensor
    score: float
    truncated: bool


def text_digest(text: str) -> str:
    """Return the SHA-256 hex digest of `text` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def encoder_key_digest(key: Mapping[str, Any]) -> str:
    """Return a short stable digest of an encoder key (a JSON-serialisable mapping)."""
    canonical = json.dumps(dict(key), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def cache_folder_name(key: Mapping[str, Any]) -> str:
    """Return a readable, file-system-safe folder name for an encoder key."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", str(key.get("encoder_id", "encoder")))[-60:]
    return f"{readable.strip('_') or 'encoder'}-{encoder_key_digest(key)}"


class EmbeddingCache:
    """Embeddings of one encoder, stored under `root / cache_folder_name(key)`."""

    def __init__(self, root: str | Path, key: Mapping[str, Any], hidden_size: int):
        self.key = dict(key)
        self.hidden_size = int(hidden_size)
        self.folder = Path(root) / cache_folder_name(self.key)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._key_json = json.dumps(self.key, sort_keys=True, ensure_ascii=False)
        self._check_key_file()
        # One connection shared by the threads of a server, serialised by a lock.
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(
            self.folder / DATABASE_NAME, timeout=SQLITE_TIMEOUT_S, check_same_thread=False
        )
        try:
            self._init_database()
        except sqlite3.DatabaseError as error:
            self._connection.close()
            raise EmbeddingCacheError(
                f"Failed to open the embedding cache {self.folder / DATABASE_NAME}: {error}. "
                "Delete that folder; its embeddings will be computed again."
            ) from error

    def _check_key_file(self) -> None:
        key_path = self.folder / KEY_FILE_NAME
        if not key_path.exists():
            write_json_atomic(key_path, {**self.key, "hidden_size": self.hidden_size})
            return
        stored = json.loads(key_path.read_text(encoding="utf-8"))
        stored_hidden = stored.pop("hidden_size", None)
        if stored != self.key or stored_hidden != self.hidden_size:
            raise EmbeddingCacheError(
                f"The embedding cache folder {self.folder} belongs to another encoder "
                f"({stored}, hidden size {stored_hidden}), not to {self.key}. "
                "Delete that folder or choose another cache directory."
            )

    def _init_database(self) -> None:
        with self._connection:
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS embeddings ("
                "digest TEXT PRIMARY KEY, embedding BLOB NOT NULL, "
                "score REAL, truncated INTEGER NOT NULL)"
            )
            self._connection.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('encoder_key', ?)", (self._key_json,)
            )
        (stored_key,) = self._connection.execute(
            "SELECT value FROM meta WHERE name = 'encoder_key'"
        ).fetchone()
        if stored_key != self._key_json:
            raise EmbeddingCacheError(
                f"The embedding database in {self.folder} was written by another encoder "
                f"({stored_key}). Delete that folder or choose another cache directory."
            )

    def get_many(self, digests: Iterable[str]) -> dict[str, CachedEmbedding]:
        """Return the cached rows among `digests`; missing or malformed rows are left out."""
        digests = list(dict.fromkeys(digests))
        found: dict[str, CachedEmbedding] = {}
        expected_bytes = self.hidden_size * 4
        chunk_size = 500  # stays below SQLite's limit on query parameters
        for start in range(0, len(digests), chunk_size):
            chunk = digests[start : start + chunk_size]
            placeholders = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._connection.execute(
                    f"SELECT digest, embedding, score, truncated FROM embeddings WHERE digest IN ({placeholders})",
                    chunk,
                ).fetchall()
            for digest, blob, score, truncated in rows:
                if len(blob) != expected_bytes:
                    logger.warning("Ignoring a malformed cache row %s in %s", digest, self.folder)
                    continue
                embedding = torch.from_numpy(np.frombuffer(blob, dtype=np.float32).copy())
                found[digest] = CachedEmbedding(
                    embedding, math.nan if score is None else float(score), bool(truncated)
                )
        return found

    def put_many(
        self, digests: list[str], embeddings: Tensor, scores: Tensor | None, truncated: list[bool]
    ) -> None:
        """Store rows in one transaction; `embeddings` is [N, hidden_size]."""
        if embeddings.shape != (len(digests), self.hidden_size):
            raise ValueError(
                f"Expected embeddings of shape ({len(digests)}, {self.hidden_size}), got {tuple(embeddings.shape)}"
            )
        matrix = embeddings.detach().to("cpu", torch.float32).numpy()
        score_values = [None] * len(digests) if scores is None else [float(s) for s in scores.tolist()]
        rows = [
            (digest, matrix[i].tobytes(), score_values[i], int(truncated[i]))
            for i, digest in enumerate(digests)
        ]
        with self._lock, self._connection:
            self._connection.executemany(
                "INSERT OR REPLACE INTO embeddings (digest, embedding, score, truncated) VALUES (?, ?, ?, ?)",
                rows,
            )

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._connection.execute("SELECT COUNT(*) FROM embeddings").fetchone()
        return int(count)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._connection.close()
