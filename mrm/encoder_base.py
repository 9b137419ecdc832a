"""The interface shared by all encoders, with the embedding cache built in.

An encoder turns (prompt, response) pairs into one float32 vector each. A
subclass defines the exact text it embeds (`render`) and how a list of pairs
becomes vectors (`_embed_pairs`). `Encoder.encode` looks each text up in the
on-disk cache first, runs the model only on texts it has not seen, and
returns the rows in input order.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mrm.embed_cache import CachedEmbedding, EmbeddingCache, text_digest

logger = logging.getLogger(__name__)


class EncoderLoadError(RuntimeError):
    """Failure to load an encoder, with a message that names the fix."""


@dataclass
class EncodedBatch:
    """Embeddings of N conversations, in the order the pairs were given."""

    embeddings: Tensor  # [N, H] float32 on the CPU
    scores: Tensor | None  # [N] float32, the reward model's own score; None for encoders without one
    num_truncated: int  # conversations shortened to fit the encoder's maximum length


class Encoder(ABC):
    """Base class: a frozen model that embeds (prompt, response) conversations."""

    encoder_id: str
    revision: str | None
    hidden_size: int
    device: torch.device
    has_scores: bool

    def __init__(self, cache_dir: str | Path | None = None, max_batch_tokens: int | None = None):
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be positive or None, got {max_batch_tokens}")
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        # Cap on rows times padded length per batch; None: batch_size alone sets batches.
        self.max_batch_tokens = max_batch_tokens
        self._cache: EmbeddingCache | None = None

    @abstractmethod
    def cache_key(self) -> dict[str, Any]:
        """Return everything besides the text that determines an embedding."""

    @abstractmethod
    def render(self, prompt: str, response: str) -> str:
        """Return the exact text that is embedded for one pair; the cache is keyed on it."""

    @abstractmethod
    def _embed_pairs(
        self,
        indices: list[int],
        prompts: list[str],
        responses: list[str],
        texts: list[str],
        batch_size: int,
        progress: bool,
    ) -> tuple[Tensor, Tensor | None, list[bool]]:
        """Embed pairs and return embeddings [M, H], scores [M] or None, and truncation flags.

        `indices` are the pairs' positions in the caller's input, for error messages.
        """

    @property
    def cache(self) -> EmbeddingCache | None:
        """The on-disk cache of this encoder, or None when caching is disabled."""
        if self.cache_dir is not None and self._cache is None:
            self._cache = EmbeddingCache(self.cache_dir, self.cache_key(), self.hidden_size)
        return self._cache

    def prepare_prompt(self, prompt: str | list[dict]) -> str | list[dict]:
        """Return the prompt in the form `render` takes; encoders without chat turns flatten message lists."""
        return flatten_prompt(prompt)

    def encode(
        self, prompts: Sequence[str | list[dict]], responses: Sequence[str], batch_size: int = 16, progress: bool = False
    ) -> EncodedBatch:
        """Embed each (prompts[i], responses[i]) conversation.

        A prompt is a string (one user turn) or a list of `{"role", "content"}`
        messages ending with a user turn (a multi-turn conversation so far).

        Texts found in the cache are not run through the model, and a text that
        occurs several times in one call is embedded once.
        """
        prompts, responses = _check_pairs(prompts, responses, batch_size)
        prompts = [self.prepare_prompt(prompt) for prompt in prompts]
        texts = [self.render(prompt, response) for prompt, response in zip(prompts, responses)]
        digests = [text_digest(text) for text in texts]

        # Look the texts up in the cache.
        cache = self.cache
        found = cache.get_many(digests) if cache is not None else {}

        # Embed each missing text once, in the order of its first occurrence.
        first_index: dict[str, int] = {}
        for index, digest in enumerate(digests):
            if digest not in found and digest not in first_index:
                first_index[digest] = index
        missing = list(first_index.values())
        if missing:
            logger.info("Embedding %d of %d conversations with %s", len(missing), len(texts), self.encoder_id)
            embeddings, scores, truncated = self._embed_pairs(
                missing,
                [prompts[i] for i in missing],
                [responses[i] for i in missing],
                [texts[i] for i in missing],
                batch_size,
                progress,
            )
            missing_digests = [digests[i] for i in missing]
            if cache is not None:
                cache.put_many(missing_digests, embeddings, scores, truncated)
            for row, digest in enumerate(missing_digests):
                score = math.nan if scores is None else float(scores[row])
                found[digest] = CachedEmbedding(embeddings[row], score, truncated[row])

        # Assemble the rows in input order.
        rows = [found[digest] for digest in digests]
        if not rows:
            return EncodedBatch(
                torch.zeros(0, self.hidden_size), torch.zeros(0) if self.has_scores else None, 0
            )
        embeddings = torch.stack([row.embedding for row in rows]).to(torch.float32)  # [N, H]
        scores = torch.tensor([row.score for row in rows], dtype=torch.float32) if self.has_scores else None
        num_truncated = sum(bool(row.truncated) for row in rows)
        return EncodedBatch(embeddings, scores, num_truncated)


def _check_pairs(
    prompts: Sequence[str], responses: Sequence[str], batch_size: int
) -> tuple[list[str], list[str]]:
    if isinstance(prompts, str) or isinstance(responses, str):
        raise TypeError("prompts and responses must be lists of strings, not a single string")
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise ValueError(
            f"Got {len(prompts)} prompts but {len(responses)} responses; pass one prompt per response."
        )
    for index, value in enumerate(prompts):
        if isinstance(value, list):
            if not value or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in value):
                raise TypeError(f"prompts[{index}] is a list but not a non-empty list of {{'role', 'content'}} messages")
        elif not isinstance(value, str):
            raise TypeError(f"prompts[{index}] is {type(value).__name__}, expected str or a list of messages")
    for index, value in enumerate(responses):
        if not isinstance(value, str):
            raise TypeError(f"responses[{index}] is {type(value).__name__}, expected str")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return prompts, responses


def flatten_prompt(prompt: str | list[dict]) -> str:
    """Turn a list of chat messages into one "User: ... / Assistant: ..." transcript; a string passes through."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0]["content"]
    labels = {"user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"{labels.get(m['role'], m['role'])}: {m['content']}" for m in prompt)


def length_batches(
    lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None
) -> list[list[int]]:
    """Split indices into batches of similar length, longest first.

    A batch contains at most `batch_size` rows and, when `max_batch_tokens` is
    set, at most that many padded tokens (rows times its longest row), so long
    inputs go in small batches and short ones in full batches. A single row
    longer than `max_batch_tokens` still forms its own batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        if batches:
            current = batches[-1]
            longest = lengths[current[0]]
            fits_tokens = max_batch_tokens is None or (len(current) + 1) * longest <= max_batch_tokens
            if len(current) < batch_size and fits_tokens:
                current.append(index)
                continue
        batches.append([index])
    return batches
