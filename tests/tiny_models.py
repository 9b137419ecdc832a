"""Tiny real transformers models built offline, for tests and benchmarks.

`build_tiny_reward_model(folder)` saves a 2-layer `LlamaForSequenceClassification`
(one label, pad token set) with a byte-level BPE tokenizer whose chat template
writes the BOS token itself, as Llama-3 templates do. Its tokenizer also adds a
BOS when called with special tokens, so rendering the template and tokenising
with special tokens gives two BOS tokens: the trap the encoder must avoid.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

BOS = "<|begin_of_text|>"
EOT = "<|eot_id|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [BOS, EOT, "<|start_header_id|>", "<|end_header_id|>", PAD]

# A Llama-3-style template: BOS first, then a header and trimmed content per message.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

WORDS = [
    "the",
    "a",
    "my",
    "i",
    "we",
    "you",
    "it",
    "is",
    "was",
    "and",
    "but",
    "so",
    "to",
    "of",
    "in",
    "on",
    "for",
    "with",
    "about",
    "this",
    "that",
    "post",
    "summary",
    "cat",
    "dog",
    "landlord",
    "rent",
    "job",
    "boss",
    "friend",
    "girlfriend",
    "boyfriend",
    "money",
    "car",
    "house",
    "school",
    "exam",
    "week",
    "year",
    "today",
    "yesterday",
    "asked",
    "told",
    "said",
    "wants",
    "thinks",
    "maybe",
    "perhaps",
    "probably",
    "definitely",
    "angry",
    "happy",
    "sad",
    "worried",
    "late",
    "early",
    "moved",
    "broke",
    "paid",
    "lost",
    "found",
    "help",
    "advice",
    "should",
    "could",
    "tl",
    "dr",
    "reddit",
    "title",
    "subreddit",
    "relationships",
    "because",
    "after",
    "before",
    "never",
    "always",
    "again",
]


def make_text(rng: random.Random, num_words: int) -> str:
    """Return `num_words` random words from a fixed vocabulary, as a sentence."""
    return " ".join(rng.choice(WORDS) for _ in range(num_words)).capitalize() + "."


def make_pairs(
    count: int, seed: int = 0, min_words: int = 3, max_words: int = 60, responses_per_prompt: int = 1
) -> tuple[list[str], list[str]]:
    """Return `count` (prompt, response) pairs of mixed lengths; responses are shorter than prompts.

    With `responses_per_prompt` > 1, consecutive pairs share a prompt, as the
    chosen and rejected summaries of one post do.
    """
    rng = random.Random(seed)
    prompts, responses = [], []
    for index in range(count):
        if index % responses_per_prompt == 0:
            prompt = make_text(rng, rng.randint(min_words, max_words))
        prompts.append(prompt)
        responses.append(make_text(rng, rng.randint(min_words, max(min_words, max_words // 3))))
    return prompts, responses


def build_tiny_tokenizer():
    """Return a byte-level BPE `PreTrainedTokenizerFast` with a Llama-3-like chat template."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rng = random.Random(0)
    backend.train_from_iterator([make_text(rng, 30) for _ in range(200)], trainer)

    # Like Llama-3 tokenizers: a BOS is added whenever special tokens are requested.
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOT, pad_token=PAD, chat_template=CHAT_TEMPLATE
    )


def build_tiny_reward_model(
    folder: str | Path, seed: int = 0, hidden_size: int = 32, num_layers: int = 2, max_positions: int = 512
) -> Path:
    """Save a tiny `LlamaForSequenceClassification` reward model and its tokenizer to `folder`."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    folder = Path(folder)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)

    # The default initialisation gives the score head small weights; larger
    # ones make score mismatches visible in tests.
    torch.nn.init.normal_(model.score.weight, std=1.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
