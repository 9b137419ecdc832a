"""Encoders on a tiny real Llama reward model and on the packaged MiniLM demo model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mrm.demo_encoder import DemoEncoder
from mrm.embed_cache import DATABASE_NAME, KEY_FILE_NAME, EmbeddingCache, EmbeddingCacheError
from mrm.encoder_base import length_batches
from mrm.encoders import (
    DEMO_ENCODER,
    EncoderLoadError,
    RewardModelEncoder,
    last_token_positions,
    load_encoder,
    load_hint,
)
from tests.tiny_models import build_tiny_reward_model, make_pairs


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


class ForwardCounter:
    """Counts forward calls of a module and the rows they process."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.rows = 0
        self._handle = module.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls += 1
        self.rows += int(input_ids.shape[0])

    def remove(self) -> None:
        self._handle.remove()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_reward_model(tmp_path_factory.mktemp("tiny_rm"), seed=0)


@pytest.fixture(scope="module")
def tiny_encoder(tiny_model_dir):
    return load_encoder(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def demo_encoder():
    return load_encoder(DEMO_ENCODER)


@pytest.fixture(scope="module")
def mixed_pairs():
    return make_pairs(10, seed=1, min_words=2, max_words=80)


# Reward-model encoder: pooling, scores, BOS, order.


def test_reward_encoder_batched_equals_single(tiny_encoder, mixed_pairs):
    prompts, responses = mixed_pairs
    batched = tiny_encoder.encode(prompts, responses, batch_size=4)
    single = torch.cat([tiny_encoder.encode([p], [r]).embeddings for p, r in zip(prompts, responses)])
    assert relative_error(batched.embeddings, single) < 1e-4


def test_reward_encoder_output_types(tiny_encoder, mixed_pairs):
    prompts, responses = mixed_pairs
    batch = tiny_encoder.encode(prompts, responses)
    assert batch.embeddings.shape == (10, tiny_encoder.hidden_size)
    assert batch.embeddings.dtype == torch.float32
    assert batch.scores.shape == (10,)
    assert batch.scores.dtype == torch.float32
    assert batch.num_truncated == 0


def test_score_head_reproduces_score(tiny_encoder, mixed_pairs):
    prompts, responses = mixed_pairs
    batch = tiny_encoder.encode(prompts, responses, batch_size=3)
    with torch.no_grad():
        head_scores = tiny_encoder.model.score(batch.embeddings)[:, 0]
    torch.testing.assert_close(head_scores, batch.scores, rtol=1e-4, atol=1e-5)


def test_score_equals_model_forward(tiny_encoder, mixed_pairs):
    prompts, responses = mixed_pairs
    batch = tiny_encoder.encode(prompts, responses, batch_size=5)
    for index in (0, 7):
        ids, _ = tiny_encoder.tokenize(prompts[index], responses[index])
        with torch.no_grad():
            logits = tiny_encoder.model(input_ids=torch.tensor([ids])).logits
        assert float(logits[0, 0]) == pytest.approx(float(batch.scores[index]), rel=1e-4)


def test_reward_encoder_ids_have_one_bos(tiny_encoder, mixed_pairs):
    ids, _ = tiny_encoder.tokenize(mixed_pairs[0][0], mixed_pairs[1][0])
    bos_id = tiny_encoder.tokenizer.bos_token_id
    assert ids.count(bos_id) == 1
    assert ids[0] == bos_id


def test_template_without_bos_gets_one(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "no_bos_template"
    shutil.copytree(tiny_model_dir, model_dir)
    template_path = model_dir / "chat_template.jinja"
    template_path.write_text(template_path.read_text().replace("{{ bos_token }}", ""))
    encoder = RewardModelEncoder(str(model_dir), device="cpu")
    ids, _ = encoder.tokenize("a prompt", "a response")
    assert ids.count(encoder.tokenizer.bos_token_id) == 1
    assert ids[0] == encoder.tokenizer.bos_token_id


def test_load_without_chat_template_rejected(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "no_template"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "chat_template.jinja").unlink()
    with pytest.raises(EncoderLoadError, match="has no chat template"):
        RewardModelEncoder(str(model_dir), device="cpu")


def test_naive_tokenisation_gives_two_bos(tiny_encoder):
    # The fixture must reproduce the trap, or the test above proves nothing.
    text = tiny_encoder.render("a prompt", "a response")
    ids = tiny_encoder.tokenizer(text)["input_ids"]
    assert ids[:2] == [tiny_encoder.tokenizer.bos_token_id] * 2


def test_reward_encoder_keeps_input_order(tiny_encoder, mixed_pairs):
    prompts, responses = mixed_pairs
    permutation = [3, 9, 0, 5, 1, 8, 2, 7, 4, 6]
    forward = tiny_encoder.encode(prompts, responses, batch_size=3)
    permuted = tiny_encoder.encode(
        [prompts[i] for i in permutation], [responses[i] for i in permutation], batch_size=3
    )
    torch.testing.assert_close(permuted.embeddings, forward.embeddings[permutation])
    torch.testing.assert_close(permuted.scores, forward.scores[permutation])


def test_last_token_positions_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_token_positions(mask).tolist() == [2, 4, 0]


def test_last_token_positions_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_positions(mask).tolist() == [4, 4, 4]


def test_length_batches_longest_first():
    assert length_batches([3, 9, 5, 1], batch_size=2) == [[1, 2], [0, 3]]


def test_length_batches_token_budget():
    # 10 tokens allow one row of 9 tokens, then rows of 5 and 3 together (2 x 5).
    assert length_batches([3, 9, 5, 1], batch_size=4, max_batch_tokens=10) == [[1], [2, 0], [3]]


def test_length_batches_row_over_budget_alone():
    assert length_batches([50, 2], batch_size=4, max_batch_tokens=10) == [[0], [1]]


def test_token_budget_keeps_embeddings(tiny_model_dir, tiny_encoder, mixed_pairs):
    prompts, responses = mixed_pairs
    budgeted = RewardModelEncoder(str(tiny_model_dir), device="cpu", max_batch_tokens=300)
    counter = ForwardCounter(budgeted.base_model)
    result = budgeted.encode(prompts, responses, batch_size=16)
    expected = tiny_encoder.encode(prompts, responses, batch_size=16)
    assert counter.calls > 1
    assert relative_error(result.embeddings, expected.embeddings) < 1e-4


def test_encode_empty_input(tiny_encoder):
    batch = tiny_encoder.encode([], [])
    assert batch.embeddings.shape == (0, tiny_encoder.hidden_size)
    assert batch.num_truncated == 0


def test_encode_rejects_mismatched_lengths(tiny_encoder):
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        tiny_encoder.encode(["a", "b"], ["c"])


def test_encode_rejects_single_string(tiny_encoder):
    with pytest.raises(TypeError, match="lists of strings"):
        tiny_encoder.encode("a prompt", "a response")


# Long inputs.


@pytest.fixture(scope="module")
def short_encoder(tiny_model_dir):
    return RewardModelEncoder(str(tiny_model_dir), device="cpu", max_length=64)


def test_long_prompt_truncated_to_max_length(short_encoder):
    ids, truncated = short_encoder.tokenize("Alpha beta gamma delta. " * 20, "The short answer.")
    assert truncated
    assert len(ids) == 64


def test_long_prompt_keeps_end_and_response(short_encoder):
    prompt = " ".join(f"w{i}" for i in range(60))
    response = "The short answer."
    ids, _ = short_encoder.tokenize(prompt, response)
    text = short_encoder.tokenizer.decode(ids)
    kept_prompt = text.split("<|end_header_id|>\n\n")[1].split("<|eot_id|>")[0]
    assert text.endswith(f"{response}<|eot_id|>")
    assert prompt.endswith(kept_prompt.strip())
    assert len(kept_prompt.strip()) < len(prompt)


def test_long_prompt_keeps_one_bos(short_encoder):
    ids, _ = short_encoder.tokenize("Alpha beta gamma delta. " * 20, "The short answer.")
    assert ids.count(short_encoder.tokenizer.bos_token_id) == 1


def test_num_truncated_counts_long_conversations(short_encoder):
    prompts = ["A short post.", "Alpha beta gamma delta. " * 20, "Another short post.", "Epsilon zeta. " * 40]
    responses = ["Short.", "Also short.", "Fine.", "Ok."]
    batch = short_encoder.encode(prompts, responses, batch_size=2)
    assert batch.num_truncated == 2


def test_truncated_embedding_equals_single(short_encoder):
    prompts = ["A short post.", "Alpha beta gamma delta. " * 20]
    responses = ["Short.", "Also short."]
    batched = short_encoder.encode(prompts, responses, batch_size=2)
    single = short_encoder.encode(prompts[1:], responses[1:])
    assert relative_error(batched.embeddings[1:], single.embeddings) < 1e-4


def test_response_over_max_length_raises(short_encoder):
    with pytest.raises(ValueError, match="Conversation 1 needs .* tokens for the response"):
        short_encoder.encode(["ok", "fine"], ["Short.", "A very long response. " * 30])


# Cache.


def test_cache_hit_skips_forward(tiny_model_dir, tmp_path, mixed_pairs):
    prompts, responses = mixed_pairs
    encoder = RewardModelEncoder(str(tiny_model_dir), device="cpu", cache_dir=tmp_path)
    first = encoder.encode(prompts, responses)
    counter = ForwardCounter(encoder.base_model)
    second = encoder.encode(prompts, responses)
    counter.remove()
    assert counter.calls == 0
    torch.testing.assert_close(second.embeddings, first.embeddings)
    torch.testing.assert_close(second.scores, first.scores)


def test_cache_survives_new_encoder_object(tiny_model_dir, tmp_path, mixed_pairs):
    prompts, responses = mixed_pairs
    first = RewardModelEncoder(str(tiny_model_dir), device="cpu", cache_dir=tmp_path).encode(
        prompts, responses
    )
    reloaded = RewardModelEncoder(str(tiny_model_dir), device="cpu", cache_dir=tmp_path)
    counter = ForwardCounter(reloaded.base_model)
    second = reloaded.encode(prompts, responses)
    assert counter.calls == 0
    torch.testing.assert_close(second.embeddings, first.embeddings)


def test_cache_runs_only_new_pairs(tiny_model_dir, tmp_path, mixed_pairs):
    prompts, responses = mixed_pairs
    encoder = RewardModelEncoder(str(tiny_model_dir), device="cpu", cache_dir=tmp_path)
    encoder.encode(prompts[:6], responses[:6])
    counter = ForwardCounter(encoder.base_model)
    encoder.encode(prompts, responses, batch_size=16)
    assert counter.rows == 4


def test_cache_keeps_truncation_count(tiny_model_dir, tmp_path):
    encoder = RewardModelEncoder(str(tiny_model_dir), device="cpu", cache_dir=tmp_path, max_length=64)
    prompts, responses = ["Short post.", "Alpha beta gamma delta. " * 20], ["Yes.", "No."]
    encoder.encode(prompts, responses)
    assert encoder.encode(prompts, responses).num_truncated == 1


def test_duplicate_texts_embedded_once(tiny_encoder):
    counter = ForwardCounter(tiny_encoder.base_model)
    tiny_encoder.encode(["Same post."] * 5, ["Same answer."] * 5)
    counter.remove()
    assert counter.rows == 1


def test_cache_of_other_model_not_read(tmp_path, tmp_path_factory, mixed_pairs):
    prompts, responses = mixed_pairs
    first_dir = build_tiny_reward_model(tmp_path_factory.mktemp("rm_a"), seed=1)
    second_dir = build_tiny_reward_model(tmp_path_factory.mktemp("rm_b"), seed=2)
    first = RewardModelEncoder(str(first_dir), device="cpu", cache_dir=tmp_path).encode(prompts, responses)
    second_encoder = RewardModelEncoder(str(second_dir), device="cpu", cache_dir=tmp_path)
    counter = ForwardCounter(second_encoder.base_model)
    second = second_encoder.encode(prompts, responses)
    assert counter.rows == len(prompts)
    assert not torch.allclose(second.embeddings, first.embeddings)


def test_cache_of_other_max_length_not_read(tiny_model_dir, tmp_path, mixed_pairs):
    prompts, responses = mixed_pairs
    RewardModelEncoder(str(tiny_model_dir), device="cpu", cache_dir=tmp_path).encode(prompts, responses)
    other = RewardModelEncoder(str(tiny_model_dir), device="cpu", cache_dir=tmp_path, max_length=200)
    counter = ForwardCounter(other.base_model)
    other.encode(prompts, responses)
    assert counter.rows == len(prompts)


def test_cache_misses_after_model_retrained(tmp_path, tmp_path_factory, mixed_pairs):
    prompts, responses = mixed_pairs
    model_dir = build_tiny_reward_model(tmp_path_factory.mktemp("rm_retrained"), seed=3)
    RewardModelEncoder(str(model_dir), device="cpu", cache_dir=tmp_path).encode(prompts, responses)
    shutil.rmtree(model_dir)
    build_tiny_reward_model(model_dir, seed=4, hidden_size=48)
    retrained = RewardModelEncoder(str(model_dir), device="cpu", cache_dir=tmp_path)
    counter = ForwardCounter(retrained.base_model)
    batch = retrained.encode(prompts, responses)
    assert counter.rows == len(prompts)
    assert batch.embeddings.shape[1] == 48


def test_cache_folder_with_other_key_rejected(tmp_path):
    key = {"encoder_id": "model-a", "revision": "1"}
    cache = EmbeddingCache(tmp_path, key, hidden_size=4)
    cache.close()
    key_path = cache.folder / KEY_FILE_NAME
    key_path.write_text(json.dumps({"encoder_id": "model-b", "revision": "1", "hidden_size": 4}))
    with pytest.raises(EmbeddingCacheError, match="belongs to another encoder"):
        EmbeddingCache(tmp_path, key, hidden_size=4)


def test_cache_corrupt_database_rejected(tmp_path):
    cache = EmbeddingCache(tmp_path, {"encoder_id": "model-a"}, hidden_size=4)
    cache.close()
    (cache.folder / DATABASE_NAME).write_bytes(b"not a database" * 100)
    with pytest.raises(EmbeddingCacheError, match="Delete that folder"):
        EmbeddingCache(tmp_path, {"encoder_id": "model-a"}, hidden_size=4)


def test_cache_round_trip_values(tmp_path):
    cache = EmbeddingCache(tmp_path, {"encoder_id": "model-a"}, hidden_size=3)
    embeddings = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    cache.put_many(["d1", "d2"], embeddings, torch.tensor([0.5, -0.5]), [False, True])
    rows = cache.get_many(["d2", "missing"])
    assert list(rows) == ["d2"]
    assert rows["d2"].embedding.tolist() == [4.0, 5.0, 6.0]
    assert rows["d2"].score == -0.5
    assert rows["d2"].truncated


# Loading.


def test_load_missing_model_names_fixes(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(EncoderLoadError) as error:
        load_encoder("no-such-org/no-such-reward-model", device="cpu", local_files_only=True)
    message = str(error.value)
    assert "HF_TOKEN" in message
    assert "--encoder demo" in message
    assert "no-such-org/no-such-reward-model" in message


def test_load_hint_when_already_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = load_hint("no-such-org/no-such-reward-model")
    assert "Offline mode is on" in message
    assert "set HF_HUB_OFFLINE=1" not in message
    assert "hf download no-such-org/no-such-reward-model" in message


def test_load_hint_for_local_folder(tmp_path):
    message = load_hint(str(tmp_path / "missing-model"))
    assert "is read as a local folder" in message
    assert "hf download" not in message


def test_load_folder_without_model_names_fixes(tmp_path):
    with pytest.raises(EncoderLoadError, match="--encoder demo"):
        load_encoder(str(tmp_path), device="cpu")


def test_offline_hub_cache_sets_revision(tiny_model_dir, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--tiny-org--tiny-rm"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    encoder = load_encoder("tiny-org/tiny-rm", device="cpu", local_files_only=True, hub_cache_dir=tmp_path)
    assert encoder.revision == commit
    assert encoder.encoder_id == "tiny-org/tiny-rm"


def test_load_demo_with_revision_rejected():
    with pytest.raises(ValueError, match="no revisions"):
        load_encoder(DEMO_ENCODER, revision="main")


# Demo encoder.


def test_load_encoder_demo_returns_demo(demo_encoder):
    assert isinstance(demo_encoder, DemoEncoder)
    assert demo_encoder.encoder_id == DEMO_ENCODER
    assert demo_encoder.device == torch.device("cpu")


def test_demo_encoder_shapes_and_no_scores(demo_encoder, mixed_pairs):
    prompts, responses = mixed_pairs
    batch = demo_encoder.encode(prompts, responses)
    assert batch.embeddings.shape == (10, demo_encoder.hidden_size)
    assert batch.embeddings.dtype == torch.float32
    assert batch.scores is None


def test_demo_encoder_batched_equals_single(demo_encoder, mixed_pairs):
    prompts, responses = mixed_pairs
    batched = demo_encoder.encode(prompts, responses, batch_size=4)
    single = torch.cat([demo_encoder.encode([p], [r]).embeddings for p, r in zip(prompts, responses)])
    assert relative_error(batched.embeddings, single) < 1e-4


def test_demo_keeps_response_long_prompt(demo_encoder):
    dim = demo_encoder.sentence_dim
    long_prompt = "My landlord raised the rent again and I do not know what to do. " * 60
    responses = ["Landlord raised rent; asks for advice.", "Maybe the rent is somewhat high, perhaps?"]
    with_long_prompt = demo_encoder.encode([long_prompt] * 2, responses)
    with_short_prompt = demo_encoder.encode(["Rent question."] * 2, responses)
    torch.testing.assert_close(with_long_prompt.embeddings[:, :dim], with_short_prompt.embeddings[:, :dim])
    assert not torch.allclose(with_long_prompt.embeddings[0, :dim], with_long_prompt.embeddings[1, :dim])


def test_demo_encoder_counts_truncated_prompt(demo_encoder):
    long_prompt = "My landlord raised the rent again. " * 80
    batch = demo_encoder.encode([long_prompt, "Short post."], ["Rent up.", "Fine."])
    assert batch.num_truncated == 1


def test_demo_length_feature_grows(demo_encoder):
    responses = [
        "Rent up.",
        "The landlord raised the rent again this year and the tenant asks what to do now.",
    ]
    batch = demo_encoder.encode(["Rent post."] * 2, responses)
    length_column = 2 * demo_encoder.sentence_dim
    assert batch.embeddings[1, length_column] > batch.embeddings[0, length_column]


def test_demo_prompt_changes_conditioned_block(demo_encoder):
    dim = demo_encoder.sentence_dim
    batch = demo_encoder.encode(["My cat is sick.", "My landlord raised the rent."], ["Rent up."] * 2)
    assert not torch.allclose(batch.embeddings[0, dim:], batch.embeddings[1, dim:])


def test_demo_encoder_cache_hit_skips_forward(tmp_path, mixed_pairs):
    prompts, responses = mixed_pairs
    encoder = load_encoder(DEMO_ENCODER, cache_dir=tmp_path)
    first = encoder.encode(prompts, responses)
    counter = ForwardCounter(encoder.model)
    second = encoder.encode(prompts, responses)
    assert counter.calls == 0
    torch.testing.assert_close(second.embeddings, first.embeddings)


STYLE_TOPICS = [
    "landlord raised the rent", "boss demanded weekend work", "sister crashed the car",
    "roommate never cleans the kitchen", "girlfriend wants to move away", "friend forgot the birthday",
    "neighbour's dog barks all night", "professor failed the final exam", "parents insist on law school",
    "coworker takes credit for work", "brother owes money", "team lost the final",
    "cat scratches the sofa", "phone stolen on the train", "manager cut the hours",
    "best friend dates the ex", "flight cancelled twice", "landlord kept the deposit",
    "son refuses homework", "wife wants a second dog", "gym raised the fee",
    "bank froze the account", "teacher lost the essay", "uncle ruined the dinner",
]  # fmt: skip

# Style preferences as (preferred, rejected) summary templates of one post.
STYLE_CASES = {
    "hedging": ("OP's {t}; OP asks what to do next.", "Perhaps OP's {t}; OP maybe asks what to do."),
    "specificity": (
        "OP's {t} on 3 May after 2 years; asks for advice.",
        "Something happened with OP's situation recently; asks for advice.",
    ),
    "tone": ("OP's {t}; OP calmly asks for advice.", "OP's {t}; OP angrily rants and insults everyone."),
    "length": (
        "OP's {t}.",
        "OP explains at great length that the {t}, describes every detail, and asks many questions.",
    ),
}


@pytest.mark.parametrize("style", sorted(STYLE_CASES))
def test_demo_features_learn_style(demo_encoder, style):
    # A bias-free linear head with the MRM input scale, trained by Bradley-Terry
    # on 16 posts, must rank the held-out 8 posts' summaries.
    preferred, rejected = STYLE_CASES[style]
    prompts = [f"POST: My {topic}. What should I do?" for topic in STYLE_TOPICS]
    chosen = demo_encoder.encode(prompts, [preferred.format(t=topic) for topic in STYLE_TOPICS]).embeddings
    other = demo_encoder.encode(prompts, [rejected.format(t=topic) for topic in STYLE_TOPICS]).embeddings
    differences = chosen - other  # (24, H)

    weights = torch.zeros(differences.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([weights], lr=5e-3)
    for _ in range(100):
        loss = torch.nn.functional.softplus(-(0.01 * differences[:16] @ weights)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    held_out_correct = (differences[16:] @ weights.detach() > 0).sum().item()
    assert held_out_correct >= 7


# Multi-turn prompts (PRISM conversations so far).

HISTORY = [
    {"role": "user", "content": "first question about gardens"},
    {"role": "assistant", "content": "first answer about soil"},
    {"role": "user", "content": "second question about water"},
]


def test_multi_turn_prompt_rendered_as_turns(tiny_encoder):
    text = tiny_encoder.render(HISTORY, "final reply")
    assert text.index("first answer about soil") < text.index("second question about water") < text.index("final reply")


def test_multi_turn_prompt_differs_from_flattened(tiny_encoder):
    turns = tiny_encoder.encode([HISTORY], ["final reply"]).embeddings
    flat = tiny_encoder.encode(["first question about gardens first answer about soil second question about water"], ["final reply"]).embeddings
    assert not torch.allclose(turns, flat)


def test_multi_turn_truncation_drops_oldest_turns(short_encoder):
    long_history = [{"role": "user", "content": "old " * 80}, {"role": "assistant", "content": "older " * 10}, HISTORY[2]]
    ids, truncated = short_encoder.tokenize(long_history, "final reply")
    assert truncated
    assert len(ids) <= 64


def test_demo_encoder_flattens_message_lists(demo_encoder):
    batch = demo_encoder.encode([HISTORY], ["final reply"])
    assert batch.embeddings.shape == (1, demo_encoder.hidden_size)


def test_bad_message_list_is_rejected(tiny_encoder):
    with pytest.raises(TypeError, match="list of"):
        tiny_encoder.encode([[{"role": "user"}]], ["reply"])
