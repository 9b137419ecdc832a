"""Tests for the dataset rules (mrm.datasets) and the embed command (mrm.prepare)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mrm.data import build_user_splits, read_embedding_files, user_generator
from mrm.datasets import (
    PRISM_REPO,
    REDDIT_PARQUET_REVISION,
    REDDIT_REPO,
    DatasetError,
    held_out_positions,
    index_conversations,
    load_pairs_file,
    load_prism,
    load_reddit,
    prism_conversation_pairs,
    split_conversations,
)
from mrm.encoder_base import EncodedBatch, flatten_prompt
from mrm.encoders import load_encoder
from mrm.prepare import EmbedConfig, build_parser, main, run_embed, split_warnings
from mrm.shards import (
    ShardError,
    chunk_path,
    embed_shards,
    make_manifest,
    merge_shards,
    prepare_shard_dir,
    prompt_text,
    shard_dir_for,
)
from tests.tiny_models import build_tiny_reward_model

FIXTURES = Path(__file__).parent / "fixtures"
REDDIT_DIR = FIXTURES / "reddit"
PRISM_DIR = FIXTURES / "prism"


class HashEncoder:
    """A deterministic stand-in encoder: each conversation's vector is derived from its text hash."""

    def __init__(self, hidden_size: int = 8, fail_after_calls: int | None = None, encoder_id: str = "hash-encoder"):
        self.encoder_id = encoder_id
        self.revision = None
        self.hidden_size = hidden_size
        self.device = torch.device("cpu")
        self.fail_after_calls = fail_after_calls
        self.calls = 0
        self.encoded = 0

    def vector(self, prompt: str, response: str) -> torch.Tensor:
        digest = hashlib.sha256(f"{prompt}\x00{response}".encode()).digest()
        return torch.tensor(list(digest[: self.hidden_size]), dtype=torch.float32) / 255.0

    def encode(self, prompts, responses, batch_size=16, progress=False) -> EncodedBatch:
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise RuntimeError("simulated interruption")
        self.calls += 1
        self.encoded += len(prompts)
        embeddings = torch.stack([self.vector(p, r) for p, r in zip(prompts, responses)])
        return EncodedBatch(embeddings=embeddings, scores=embeddings.sum(dim=1), num_truncated=0)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fake_hub_snapshot(cache_dir: Path, repo_id: str, revision: str, files: dict[str, Path]) -> None:
    """Lay out a Hub cache entry for a dataset repo, as huggingface_hub writes it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache_dir / ("datasets--" + repo_id.replace("/", "--"))
    ref_file = repo_dir / "refs" / revision
    ref_file.parent.mkdir(parents=True, exist_ok=True)
    ref_file.write_text(commit)
    for relative, source in files.items():
        target = repo_dir / "snapshots" / commit / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


# ----------------------------------------------------------------------------- Reddit rules


def test_reddit_keeps_workers_in_both_splits():
    dataset = load_reddit(REDDIT_DIR)
    assert list(dataset.users) == ["w_alpha", "w_beta"]


def test_reddit_entries_train_then_val_in_file_order():
    users = load_reddit(REDDIT_DIR).users
    assert [e["post_id"] for e in users["w_alpha"]] == ["t3_aaa01", "t3_aaa03", "t3_aaa05", "t3_aaa06", "t3_aaa03"]
    assert [e["split"] for e in users["w_alpha"]] == ["train", "train", "train", "val", "val"]


def test_reddit_choice_picks_chosen_summary():
    entry = load_reddit(REDDIT_DIR).users["w_alpha"][1]  # choice 1
    assert entry["chosen"] == " Friend is flaky."
    assert entry["rejected"] == " Friend cancels plans last minute; should I confront them?"
    assert entry["prompt"].startswith("My best friend keeps cancelling plans")


def test_reddit_drops_rows_without_post():
    dataset = load_reddit(REDDIT_DIR)
    assert dataset.stats["rows_without_pair"] == 1
    assert all(entry["prompt"] is not None for entries in dataset.users.values() for entry in entries)


def test_reddit_shared_conversations_are_embedded_once():
    dataset = load_reddit(REDDIT_DIR)
    alpha, beta = dataset.users["w_alpha"][0], dataset.users["w_beta"][1]
    assert (alpha["chosen_idx"], alpha["rejected_idx"]) == (beta["chosen_idx"], beta["rejected_idx"])
    assert len(dataset.conversations) == 2 * dataset.num_pairs - 2 - 2  # two repeated pairs


def test_reddit_split_from_folder_layout(tmp_path):
    # The Hub's parquet conversion layout: comparisons/<split>/NNNN.<ext>.
    rows = read_jsonl(REDDIT_DIR / "batch3.json") + read_jsonl(REDDIT_DIR / "batch11.json")
    train = [row for row in rows if row["split"] == "train"]
    validation = [dict(row, split="valid9") for row in rows if row["split"] != "train"]
    for split, split_rows in (("train", train), ("validation", validation)):
        folder = tmp_path / "comparisons" / split
        folder.mkdir(parents=True)
        (folder / "0000.jsonl").write_text("".join(json.dumps(row) + "\n" for row in split_rows))
    users = load_reddit(tmp_path).users
    assert list(users) == ["w_alpha", "w_beta"]
    assert [e["split"] for e in users["w_beta"]] == ["train", "train", "val"]


def test_reddit_reads_parquet_files(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    for name, split in (("batch3.json", "train"), ("batch11.json", "validation")):
        folder = tmp_path / "comparisons" / split
        folder.mkdir(parents=True)
        pd.read_json(REDDIT_DIR / name, lines=True).to_parquet(folder / "0000.parquet")
    users = load_reddit(tmp_path).users
    assert list(users) == ["w_alpha", "w_beta"]
    assert users["w_alpha"][1]["chosen"] == " Friend is flaky."


def test_reddit_from_offline_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    fake_hub_snapshot(tmp_path, REDDIT_REPO, REDDIT_PARQUET_REVISION, {
        "comparisons/train/0000.jsonl": REDDIT_DIR / "batch3.json",
        "comparisons/validation/0000.jsonl": REDDIT_DIR / "batch11.json",
    })
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    dataset = load_reddit(cache_dir=tmp_path)
    assert list(dataset.users) == ["w_alpha", "w_beta"]


def test_reddit_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="Reddit data folder not found"):
        load_reddit(tmp_path / "nothing")


def test_reddit_max_users_keeps_first_sorted():
    dataset = load_reddit(REDDIT_DIR, max_users=1)
    assert list(dataset.users) == ["w_alpha"]


# ----------------------------------------------------------------------------- PRISM rules


def test_prism_keeps_users_with_six_conversations():
    # user1002 has 5 conversations, user1005 has 4 left after dropping 2 without a rejected reply,
    # user1004 completed no conversation.
    assert list(load_prism(PRISM_DIR).users) == ["user1001", "user1003"]


def test_prism_drops_conversation_without_rejected_reply():
    users = load_prism(PRISM_DIR).users
    conversation_ids = {entry["conversation_id"] for entry in users["user1003"]}
    assert "c1003-x" not in conversation_ids
    assert len(conversation_ids) == 6


def test_prism_one_pair_per_rejected_reply():
    entries = [e for e in load_prism(PRISM_DIR).users["user1001"] if e["conversation_id"] == "c1001-0"]
    assert [e["rejected"] for e in entries[:3]] == ["Order pizza.", "Here is a steak recipe.", "Try a mushroom risotto."]
    assert len(entries) == 5


def test_prism_turn_without_rejected_reply_gives_no_pair():
    conversation = read_jsonl(PRISM_DIR / "conversations.jsonl")[0]
    chosen = [pair["chosen"] for pair in prism_conversation_pairs(conversation)]
    assert "Sparkling water with lemon." not in chosen


def test_prism_prompt_history_uses_earlier_chosen_replies():
    conversation = read_jsonl(PRISM_DIR / "conversations.jsonl")[0]
    last = prism_conversation_pairs(conversation)[-1]
    assert last["prompt"] == [
        {"role": "user", "content": "Can you help me plan a vegetarian dinner for six?"},
        {"role": "assistant", "content": "Sure: a lentil stew, bread and a salad."},
        {"role": "user", "content": "What dessert goes with the stew?"},
        {"role": "assistant", "content": "A baked apple crumble."},
        {"role": "user", "content": "How long does the stew take?"},
    ]


def test_prism_pair_scores_are_ratings():
    conversation = read_jsonl(PRISM_DIR / "conversations.jsonl")[0]
    first = prism_conversation_pairs(conversation)[0]
    assert (first["chosen_score"], first["rejected_score"]) == (90, 30)


def test_prism_split_is_by_conversation_half_each():
    users = load_prism(PRISM_DIR).users
    for entries in users.values():
        split_of = {}
        for entry in entries:
            assert split_of.setdefault(entry["conversation_id"], entry["split"]) == entry["split"]
        assert sorted(split_of.values()) == ["train"] * 3 + ["val"] * 3


def test_prism_split_follows_published_rule():
    ids = ["c1", "c2", "c3", "c4", "c5"]
    expected = list(ids)
    user_generator("user9", 42).shuffle(expected)
    train, val = split_conversations(ids, "user9", 42)
    assert train == set(expected[:2])
    assert val == set(expected[2:])


def test_prism_split_depends_on_seed():
    ids = [f"c{i}" for i in range(20)]
    assert split_conversations(ids, "user9", 1) != split_conversations(ids, "user9", 2)


def test_prism_from_offline_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    fake_hub_snapshot(tmp_path, PRISM_REPO, "main", {
        "survey.jsonl": PRISM_DIR / "survey.jsonl",
        "conversations.jsonl": PRISM_DIR / "conversations.jsonl",
    })
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert list(load_prism(cache_dir=tmp_path).users) == ["user1001", "user1003"]


def test_prism_missing_file_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="file not found"):
        load_prism(tmp_path)


def test_prompt_text_keeps_chat_history():
    prompt = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    assert prompt_text(prompt) == prompt


def test_flatten_prompt_for_demo_encoder():
    prompt = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    assert flatten_prompt(prompt) == "User: Hi\n\nAssistant: Hello\n\nUser: Bye"
    assert flatten_prompt(prompt[:1]) == "Hi"


# ----------------------------------------------------------------------------- pairs files


def test_pairs_file_groups_by_user():
    dataset = load_pairs_file(FIXTURES / "pairs_valid.csv")
    assert {user: len(entries) for user, entries in dataset.users.items()} == {"ann": 2, "bob": 2}


def test_pairs_file_skips_invalid_records():
    dataset = load_pairs_file(FIXTURES / "pairs_malformed.jsonl")
    assert {user: len(entries) for user, entries in dataset.users.items()} == {"ann": 2, "bob": 1}
    assert dataset.stats["invalid_records"] == 6


def test_pairs_file_without_user_id_uses_default_user(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\np,a,b\n")
    dataset = load_pairs_file(path, split="val")
    assert dataset.users == {"default": [{"prompt": "p", "chosen": "a", "rejected": "b", "split": "val",
                                          "chosen_idx": 0, "rejected_idx": 1}]}


def test_pairs_file_split_column_overrides_pairs_split(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected,split\np,a,b,test\nq,a,b,\nr,a,b,train\n")
    dataset = load_pairs_file(path, split="val")
    assert [entry["split"] for entry in dataset.users["default"]] == ["val", "val", "train"]


def test_pairs_file_invalid_split_is_skipped(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "split": "holdout"}\n'
                    '{"prompt": "q", "chosen": "a", "rejected": "b", "split": "val"}\n')
    dataset = load_pairs_file(path)
    assert [entry["prompt"] for entry in dataset.users["default"]] == ["q"]
    assert dataset.stats["invalid_records"] == 1


def test_pairs_file_val_fraction_holds_out_per_user():
    dataset = load_pairs_file(FIXTURES / "pairs_valid.csv", val_fraction=0.3)
    splits = {user: sorted(entry["split"] for entry in entries) for user, entries in dataset.users.items()}
    assert splits == {"ann": ["train", "val"], "bob": ["train", "val"]}


def test_pairs_file_val_fraction_keeps_split_column(tmp_path):
    path = tmp_path / "pairs.csv"
    rows = [f"p{i},a,b,{'train' if i < 3 else ''}" for i in range(7)]
    path.write_text("prompt,chosen,rejected,split\n" + "\n".join(rows) + "\n")
    entries = load_pairs_file(path, val_fraction=0.5).users["default"]
    assert [entry["split"] for entry in entries[:3]] == ["train"] * 3
    assert sorted(entry["split"] for entry in entries[3:]) == ["train", "train", "val", "val"]


def test_pairs_file_val_fraction_follows_seed(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\n" + "".join(f"p{i},a,b\n" for i in range(20)))

    def held_out(seed: int) -> list[str]:
        entries = load_pairs_file(path, val_fraction=0.3, seed=seed).users["default"]
        return [entry["prompt"] for entry in entries if entry["split"] == "val"]

    assert held_out(1) == held_out(1)
    assert held_out(1) != held_out(2)


@pytest.mark.parametrize(
    ("count", "fraction", "expected"), [(1, 0.5, 0), (2, 0.1, 1), (2, 0.9, 1), (10, 0.3, 3), (10, 0.99, 9)]
)
def test_held_out_positions_count(count, fraction, expected):
    assert len(held_out_positions(list(range(count)), "u", fraction, seed=0)) == expected


def test_pairs_file_val_fraction_needs_train_split():
    with pytest.raises(ValueError, match="split must be 'train'"):
        load_pairs_file(FIXTURES / "pairs_valid.csv", split="val", val_fraction=0.3)


def test_pairs_file_all_invalid(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p"}\n')
    with pytest.raises(DatasetError, match="line 1: missing 'chosen', 'rejected'"):
        load_pairs_file(path)


def test_index_conversations_dedups_shared_prompt_response():
    users = {"u": [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": "c"},
        {"prompt": "q", "chosen": "a", "rejected": "b"},
    ]}
    dataset = index_conversations("pairs", users)
    assert [(e["chosen_idx"], e["rejected_idx"]) for e in dataset.users["u"]] == [(0, 1), (0, 2), (3, 4)]


# ----------------------------------------------------------------------------- shards and the embed command


def make_config(tmp_path: Path, **overrides) -> EmbedConfig:
    settings = {"dataset": "reddit", "out": str(tmp_path / "out" / "reddit"), "data_dir": str(REDDIT_DIR), "chunk_size": 3}
    settings.update(overrides)
    return EmbedConfig(**settings)


def test_embed_single_process_writes_readable_files(tmp_path):
    result = run_embed(make_config(tmp_path), encoder=HashEncoder())
    data = read_embedding_files(result.pt_path, result.json_path)
    assert data.embeddings.shape == (result.num_conversations, 8)
    assert list(data.users) == ["w_alpha", "w_beta"]


def test_embed_rows_match_encoder_output(tmp_path):
    encoder = HashEncoder()
    result = run_embed(make_config(tmp_path), encoder=encoder)
    data = read_embedding_files(result.pt_path, result.json_path)
    entry = data.users["w_beta"][0]
    expected = encoder.vector(entry["prompt"], entry["chosen"])
    assert torch.equal(data.embeddings[entry["chosen_idx"]], expected)


def test_embed_stores_texts_and_model_scores(tmp_path):
    encoder = HashEncoder()
    result = run_embed(make_config(tmp_path), encoder=encoder)
    entry = read_embedding_files(result.pt_path, result.json_path).users["w_alpha"][0]
    assert entry["chosen"] == " Landlord raising rent 30% after I repaired the heater; is that legal?"
    assert entry["chosen_model_score"] == pytest.approx(encoder.vector(entry["prompt"], entry["chosen"]).sum().item())


def test_embed_removes_shards_after_merge(tmp_path):
    config = make_config(tmp_path)
    run_embed(config, encoder=HashEncoder())
    assert not shard_dir_for(config.out).exists()


def test_embed_interrupted_run_resumes_without_redoing_chunks(tmp_path):
    config = make_config(tmp_path / "resumed")
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run_embed(config, encoder=HashEncoder(fail_after_calls=1))
    shard_dir = shard_dir_for(config.out)
    assert chunk_path(shard_dir, 0).is_file()
    assert not chunk_path(shard_dir, 1).is_file()

    second = HashEncoder()
    resumed = run_embed(config, encoder=second)
    reference = run_embed(make_config(tmp_path / "reference"), encoder=HashEncoder())
    assert second.encoded == resumed.num_conversations - config.chunk_size
    assert torch.equal(torch.load(resumed.pt_path), torch.load(reference.pt_path))
    assert json.loads(resumed.json_path.read_text()) == json.loads(reference.json_path.read_text())


def test_embed_rejects_shards_of_another_encoder(tmp_path):
    config = make_config(tmp_path, keep_shards=True)
    with pytest.raises(RuntimeError):
        run_embed(config, encoder=HashEncoder(fail_after_calls=1))
    with pytest.raises(ShardError, match="encoder_id 'hash-encoder' there, 'other-encoder' now"):
        run_embed(config, encoder=HashEncoder(encoder_id="other-encoder"))


def test_embed_overwrite_shards_rebuilds(tmp_path):
    config = make_config(tmp_path)
    with pytest.raises(RuntimeError):
        run_embed(config, encoder=HashEncoder(fail_after_calls=1))
    config.overwrite_shards = True
    encoder = HashEncoder(encoder_id="other-encoder")
    result = run_embed(config, encoder=encoder)
    assert encoder.encoded == result.num_conversations


def test_prepare_shard_dir_rejects_folder_without_manifest(tmp_path):
    shard_dir = tmp_path / "x.shards"
    shard_dir.mkdir()
    (shard_dir / "chunk_000000.pt").write_bytes(b"junk")
    manifest = make_manifest("e", None, [("p", "r")], 4)
    with pytest.raises(ShardError, match="without a manifest.json"):
        prepare_shard_dir(shard_dir, manifest)


def test_two_process_shards_merge_like_one(tmp_path):
    conversations = load_prism(PRISM_DIR).conversations
    single_dir, split_dir = tmp_path / "single", tmp_path / "split"
    single_dir.mkdir()
    split_dir.mkdir()
    embed_shards(conversations, HashEncoder(), single_dir, chunk_size=4)
    first = embed_shards(conversations, HashEncoder(), split_dir, chunk_size=4, process_index=0, num_processes=2)
    second = embed_shards(conversations, HashEncoder(), split_dir, chunk_size=4, process_index=1, num_processes=2)
    assert set(first).isdisjoint(second)
    single, single_scores, _ = merge_shards(single_dir, len(conversations), 4)
    merged, merged_scores, _ = merge_shards(split_dir, len(conversations), 4)
    assert torch.equal(single, merged)
    assert torch.equal(single_scores, merged_scores)


def test_merge_shards_reports_missing_chunk(tmp_path):
    conversations = [("p", f"r{i}") for i in range(10)]
    embed_shards(conversations, HashEncoder(), tmp_path, chunk_size=4, process_index=0, num_processes=2)
    with pytest.raises(ShardError, match="chunk 1 is missing"):
        merge_shards(tmp_path, len(conversations), 4)


def test_embed_prism_stores_message_prompts(tmp_path):
    config = make_config(tmp_path, dataset="prism", data_dir=str(PRISM_DIR), out=str(tmp_path / "prism"))
    result = run_embed(config, encoder=HashEncoder())
    entry = read_embedding_files(result.pt_path, result.json_path).users["user1001"][0]
    assert entry["prompt"] == [{"role": "user", "content": "Can you help me plan a vegetarian dinner for six?"}]
    assert entry["chosen_score"] == 90


def test_parser_mirrors_config_fields():
    args = build_parser().parse_args(["pairs", "--out", "x", "--input", "f.csv", "--max_users", "3", "--keep_shards"])
    config = EmbedConfig(**vars(args))
    assert (config.dataset, config.max_users, config.keep_shards, config.batch_size) == ("pairs", 3, True, 16)


def test_main_pairs_without_input_fails(tmp_path, capsys):
    assert main(["pairs", "--out", str(tmp_path / "x"), "--encoder", "demo"]) == 2
    assert "needs --input FILE" in capsys.readouterr().err


def test_main_embeds_pairs_with_demo_encoder(tmp_path):
    out = tmp_path / "demo"
    code = main(["pairs", "--input", str(FIXTURES / "pairs_valid.csv"), "--encoder", "demo", "--out", str(out)])
    assert code == 0
    data = read_embedding_files(f"{out}.pt", f"{out}.json")
    assert data.embeddings.shape[0] == 7  # 8 responses, one shared (prompt, response)
    assert sorted(data.users) == ["ann", "bob"]


def test_main_val_fraction_gives_trainable_file(tmp_path):
    out = tmp_path / "held_out"
    code = main(["pairs", "--input", str(FIXTURES / "pairs_valid.csv"), "--encoder", "demo", "--out", str(out),
                 "--val_fraction", "0.3"])
    assert code == 0
    splits = build_user_splits(read_embedding_files(f"{out}.pt", f"{out}.json"))
    assert len(splits.seen) == 1
    assert len(splits.unseen) == 1


def test_main_warns_when_pairs_cannot_train(tmp_path, caplog):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\np,a,b\nq,c,d\n")
    caplog.set_level("WARNING", logger="mrm.prepare")
    assert main(["pairs", "--input", str(path), "--encoder", "demo", "--out", str(tmp_path / "one")]) == 0
    messages = [record.getMessage() for record in caplog.records if record.name == "mrm.prepare"]
    assert len(messages) == 1
    assert "is not usable by train or evaluate yet" in messages[0]
    assert "--val_fraction" in messages[0]


def test_split_warnings_name_users_without_val():
    users = {
        "a": [{"split": "train"}, {"split": "val"}],
        "b": [{"split": "train"}, {"split": "val"}],
        "c": [{"split": "train"}],
    }
    messages = split_warnings(users, Path("x.json"))
    assert messages == [
        "x.json: 1 of 3 users have no train or no val pairs, so train and evaluate skip them. "
        "Give each of them pairs of both splits to use them."
    ]


def test_split_warnings_single_user():
    messages = split_warnings({"default": [{"split": "train"}, {"split": "val"}]}, Path("x.json"))
    assert "give the rows a user_id column" in messages[0]


def test_split_warnings_none_for_usable_file():
    users = {user: [{"split": "train"}, {"split": "val"}] for user in ("a", "b")}
    assert split_warnings(users, Path("x.json")) == []


def test_main_reuses_shards_after_failed_load(tmp_path, capsys):
    arguments = ["pairs", "--input", str(FIXTURES / "pairs_valid.csv"), "--out", str(tmp_path / "mine")]
    empty_model = tmp_path / "empty_model"
    empty_model.mkdir()
    assert main([*arguments, "--encoder", str(empty_model)]) == 2
    assert sorted(path.name for path in shard_dir_for(tmp_path / "mine").iterdir()) == ["manifest.json"]
    capsys.readouterr()

    assert main([*arguments, "--encoder", "demo"]) == 0
    assert "error" not in capsys.readouterr().err


def test_prepare_shard_dir_replaces_manifest_without_chunks(tmp_path):
    shard_dir = tmp_path / "x.shards"
    prepare_shard_dir(shard_dir, make_manifest("first", None, [("p", "r")], 4))
    manifest = make_manifest("second", None, [("p", "r")], 4)
    prepare_shard_dir(shard_dir, manifest)
    assert json.loads((shard_dir / "manifest.json").read_text()) == manifest


def test_main_out_below_a_file_is_an_error(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code = main(["pairs", "--input", str(FIXTURES / "pairs_valid.csv"), "--encoder", "demo",
                 "--out", str(tmp_path / "file" / "x")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --out {tmp_path / 'file' / 'x'}: {tmp_path / 'file'} is a file, not a folder; "
        "choose an output prefix inside a folder"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--val_fraction", "1"], "--val_fraction must be at least 0 and below 1"),
        (["--val_fraction", "0.3", "--pairs_split", "val"], "cannot be combined with --pairs_split val"),
    ],
)
def test_main_invalid_val_fraction(tmp_path, capsys, arguments, message):
    code = main(["pairs", "--input", str(FIXTURES / "pairs_valid.csv"), "--encoder", "demo",
                 "--out", str(tmp_path / "x"), *arguments])
    assert code == 2
    assert message in capsys.readouterr().err


def test_parser_reads_val_fraction_as_float():
    args = build_parser().parse_args(["pairs", "--out", "x", "--val_fraction", "0.25"])
    assert args.val_fraction == 0.25


def test_parser_help_lists_pairs_columns():
    actions = {action.dest: action.help for action in build_parser()._actions}
    for column in ("prompt", "chosen", "rejected", "user_id", "split"):
        assert column in actions["input"]


def test_parser_help_describes_data_dir_layout():
    help_text = {action.dest: action.help for action in build_parser()._actions}["data_dir"]
    assert "comparisons/train/" in help_text
    assert "survey.jsonl" in help_text


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory) -> Path:
    return build_tiny_reward_model(tmp_path_factory.mktemp("tiny_rm"), seed=0)


def test_main_embeds_reddit_with_tiny_reward_model(tmp_path, tiny_reward_model):
    out = tmp_path / "reddit"
    code = main(["reddit", "--data_dir", str(REDDIT_DIR), "--encoder", str(tiny_reward_model), "--out", str(out),
                 "--chunk_size", "5", "--batch_size", "4"])
    assert code == 0
    data = read_embedding_files(f"{out}.pt", f"{out}.json")
    assert data.embeddings.shape == (12, 32)


def test_embed_tiny_model_matches_direct_encoding(tmp_path, tiny_reward_model):
    config = make_config(tmp_path, encoder=str(tiny_reward_model))
    result = run_embed(config)
    data = read_embedding_files(result.pt_path, result.json_path)
    entry = data.users["w_beta"][2]
    direct = load_encoder(str(tiny_reward_model)).encode([entry["prompt"]], [entry["rejected"]])
    assert torch.allclose(data.embeddings[entry["rejected_idx"]], direct.embeddings[0], atol=1e-5)
    assert entry["rejected_model_score"] == pytest.approx(direct.scores[0].item(), abs=1e-5)


def test_embed_two_cpu_processes_under_torchrun(tmp_path, tiny_reward_model):
    # A real two-process launch: gloo on the CPU, each process embedding every other chunk.
    repo_root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1")
    common = ["prism", "--data_dir", str(PRISM_DIR), "--encoder", str(tiny_reward_model), "--chunk_size", "4"]
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mrm", "embed",
         *common, "--out", str(tmp_path / "two")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "process 1 of 2: 4 chunks to embed" in launched.stderr
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    two_processes = read_embedding_files(tmp_path / "two.pt", tmp_path / "two.json")
    one_process = read_embedding_files(tmp_path / "one.pt", tmp_path / "one.json")
    assert torch.allclose(two_processes.embeddings, one_process.embeddings, atol=1e-5)
    assert two_processes.users == one_process.users


def test_reddit_offline_without_cache_is_an_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError, match="pass a folder of the downloaded files with --data_dir"):
        load_reddit(cache_dir=tmp_path)


def test_prism_offline_without_cache_is_an_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError, match="could not read the dataset HannahRoseKirk/prism-alignment"):
        load_prism(cache_dir=tmp_path)


def test_main_offline_without_cache_names_offline_mode(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code = main(["prism", "--cache_dir", str(tmp_path / "hub"), "--encoder", "demo", "--out", str(tmp_path / "x")])
    error = capsys.readouterr().err
    assert code == 2
    assert "Hub offline mode is on" in error
    assert "Check the network" not in error


def test_download_hint_online_names_network(monkeypatch):
    import mrm.hub
    from mrm.datasets import _download_hint

    monkeypatch.setattr(mrm.hub, "is_offline", lambda: False)
    hint = _download_hint(PRISM_REPO, OSError("connection refused"))
    assert "Check the network and HF_TOKEN" in hint


def test_embed_bfloat16_storage(tmp_path):
    encoder = HashEncoder()
    result = run_embed(make_config(tmp_path, dtype="bfloat16"), encoder=encoder)
    data = read_embedding_files(result.pt_path, result.json_path)
    entry = data.users["w_beta"][0]
    assert data.embeddings.dtype == torch.bfloat16
    assert torch.equal(data.embeddings[entry["chosen_idx"]], encoder.vector(entry["prompt"], entry["chosen"]).bfloat16())


def test_merge_shards_without_scores(tmp_path):
    class NoScoreEncoder(HashEncoder):
        def encode(self, prompts, responses, batch_size=16, progress=False):
            batch = super().encode(prompts, responses, batch_size, progress)
            return EncodedBatch(batch.embeddings, None, 0)

    conversations = [("p", f"r{i}") for i in range(5)]
    embed_shards(conversations, NoScoreEncoder(), tmp_path, chunk_size=2)
    embeddings, scores, _ = merge_shards(tmp_path, len(conversations), 2)
    assert embeddings.shape == (5, 8)
    assert scores is None


# ----------------------------------------------------------------------------- embed command input and output checks


def copy_prism(folder: Path, file_name: str | None = None, line: int = 1, edit=None) -> Path:
    """Copy the PRISM fixture into `folder`, applying `edit` to the record on `line` of `file_name`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("survey.jsonl", "conversations.jsonl"):
        records = read_jsonl(PRISM_DIR / name)
        if name == file_name:
            edit(records[line - 1])
        (folder / name).write_text("".join(json.dumps(record) + "\n" for record in records))
    return folder


def copy_reddit(folder: Path) -> Path:
    """Copy the Reddit fixture files into `folder/comparisons`, as the original release lays them out."""
    comparisons = folder / "comparisons"
    comparisons.mkdir(parents=True)
    for path in REDDIT_DIR.iterdir():
        shutil.copyfile(path, comparisons / path.name)
    return folder


def drop_first_turn(record: dict) -> None:
    del record["conversation_history"][0]["turn"]


@pytest.mark.parametrize(
    ("file_name", "line", "edit", "problem"),
    [
        ("conversations.jsonl", 2, lambda record: record.pop("user_id"), "missing field 'user_id'"),
        ("conversations.jsonl", 1, drop_first_turn, "message 1 of conversation_history is missing field 'turn'"),
        ("survey.jsonl", 3, lambda record: record.pop("user_id"), "missing field 'user_id'"),
    ],
)
def test_main_prism_missing_field_names_line(tmp_path, capsys, file_name, line, edit, problem):
    data_dir = copy_prism(tmp_path / "prism", file_name, line, edit)
    code = main(["prism", "--data_dir", str(data_dir), "--encoder", "demo", "--out", str(tmp_path / "x")])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {data_dir / file_name} line {line}: {problem}; fix or delete that line"


def test_main_prism_turn_must_be_integer(tmp_path, capsys):
    def set_turn(record: dict) -> None:
        record["conversation_history"][2]["turn"] = "second"

    data_dir = copy_prism(tmp_path / "prism", "conversations.jsonl", 1, set_turn)
    code = main(["prism", "--data_dir", str(data_dir), "--encoder", "demo", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "line 1: message 3 of conversation_history has turn 'second', not an integer" in capsys.readouterr().err


def test_main_prism_record_must_be_object(tmp_path, capsys):
    data_dir = copy_prism(tmp_path / "prism")
    with (data_dir / "survey.jsonl").open("a") as handle:
        handle.write("[1, 2]\n")
    code = main(["prism", "--data_dir", str(data_dir), "--encoder", "demo", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "survey.jsonl line 6: expected a JSON object, got list" in capsys.readouterr().err


def pairs_arguments(out: Path, *extra: str) -> list[str]:
    return ["pairs", "--input", str(FIXTURES / "pairs_valid.csv"), "--encoder", "demo", "--out", str(out), *extra]


def test_main_rerun_keeps_existing_output(tmp_path, capsys):
    out = tmp_path / "mine"
    assert main(pairs_arguments(out)) == 0
    written = (tmp_path / "mine.json").read_bytes()
    capsys.readouterr()

    code = main(pairs_arguments(out, "--val_fraction", "0.3"))
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {out}.pt and {out}.json already exist; choose another --out, or pass --overwrite to replace them"
    )
    assert (tmp_path / "mine.json").read_bytes() == written


def test_main_existing_output_checked_before_encoder_loads(tmp_path, capsys):
    (tmp_path / "mine.json").write_text("{}")
    code = main(["pairs", "--input", str(FIXTURES / "pairs_valid.csv"), "--encoder", str(tmp_path / "no_model"),
                 "--out", str(tmp_path / "mine")])
    error = capsys.readouterr().err
    assert code == 2
    assert f"{tmp_path / 'mine.json'} already exists" in error
    assert not shard_dir_for(tmp_path / "mine").exists()


def test_main_overwrite_replaces_output(tmp_path):
    (tmp_path / "mine.pt").write_bytes(b"old")
    (tmp_path / "mine.json").write_text("{}")
    assert main(pairs_arguments(tmp_path / "mine", "--overwrite")) == 0
    assert sorted(read_embedding_files(tmp_path / "mine.pt", tmp_path / "mine.json").users) == ["ann", "bob"]


class SignallingEncoder(HashEncoder):
    """A stand-in encoder that sends `signum` to its own process on call number `after_calls` + 1."""

    def __init__(self, signum: int, after_calls: int):
        super().__init__(encoder_id="demo")
        self.signum = signum
        self.after_calls = after_calls

    def encode(self, prompts, responses, batch_size=16, progress=False) -> EncodedBatch:
        if self.calls == self.after_calls:
            os.kill(os.getpid(), self.signum)
            time.sleep(10)  # the signal's KeyboardInterrupt ends this sleep
            raise AssertionError(f"signal {self.signum} was not turned into KeyboardInterrupt")
        return super().encode(prompts, responses, batch_size, progress)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_main_interrupt_reports_chunks_and_resumes(tmp_path, capsys, monkeypatch, signum):
    arguments = pairs_arguments(tmp_path / "mine", "--chunk_size", "2")
    monkeypatch.setattr("mrm.prepare.load_encoder", lambda *args, **kwargs: SignallingEncoder(signum, after_calls=1))
    handler_before = signal.getsignal(signal.SIGTERM)
    code = main(arguments)
    assert code == 130
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line == "interrupted after 1 of 4 chunks; rerun the same command to resume"
    assert signal.getsignal(signal.SIGTERM) == handler_before

    resumed = HashEncoder(encoder_id="demo")
    monkeypatch.setattr("mrm.prepare.load_encoder", lambda *args, **kwargs: resumed)
    assert main(arguments) == 0
    assert resumed.calls == 3


def make_axis_eval_file(folder: Path) -> None:
    """Write an axis evaluation file in the original release's layout: no choice or summaries columns."""
    folder.mkdir(parents=True)
    row = {"info": {"id": "t3_aaa01", "post": "p"}, "summary": {"text": "s"}, "worker": "w_alpha", "split": "train"}
    (folder / "tldraxis1.json").write_text(json.dumps(row) + "\n")


def test_main_reddit_skips_axis_evals_folder(tmp_path):
    data_dir = copy_reddit(tmp_path / "release")
    make_axis_eval_file(data_dir / "axis_evals")
    code = main(["reddit", "--data_dir", str(data_dir), "--encoder", "demo", "--out", str(tmp_path / "reddit")])
    assert code == 0
    assert list(read_embedding_files(tmp_path / "reddit.pt", tmp_path / "reddit.json").users) == ["w_alpha", "w_beta"]


def test_reddit_reads_file_named_axis_outside_axis_folder(tmp_path):
    data_dir = copy_reddit(tmp_path / "release")
    make_axis_eval_file(data_dir / "evals")
    (data_dir / "evals" / "tldraxis1.json").rename(data_dir / "axis.json")
    with pytest.raises(DatasetError, match="axis.json lacks the comparison column"):
        load_reddit(data_dir)


def test_parser_help_names_axis_folders():
    help_text = {action.dest: action.help for action in build_parser()._actions}["data_dir"]
    assert "folders whose names start with axis" in help_text


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_main_reddit_empty_file_is_named(tmp_path, capsys, content):
    data_dir = copy_reddit(tmp_path / "release")
    (data_dir / "comparisons" / "batch99.json").write_text(content)
    code = main(["reddit", "--data_dir", str(data_dir), "--encoder", "demo", "--out", str(tmp_path / "x")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {data_dir / 'comparisons' / 'batch99.json'} is empty: it contains no comparison rows; "
        "delete it or replace it with the full file"
    )


def test_main_reddit_out_inside_data_dir(tmp_path, capsys):
    data_dir = copy_reddit(tmp_path / "release")
    out = data_dir / "embeddings" / "reddit"
    code = main(["reddit", "--data_dir", str(data_dir), "--encoder", "demo", "--out", str(out)])
    assert code == 2
    assert f"--out {out} is inside --data_dir {data_dir}" in capsys.readouterr().err
    assert not (data_dir / "embeddings").exists()


def test_main_prism_out_inside_data_dir_is_allowed(tmp_path):
    data_dir = copy_prism(tmp_path / "prism")
    assert main(["prism", "--data_dir", str(data_dir), "--encoder", "demo", "--out", str(data_dir / "prism")]) == 0


def test_main_pairs_with_data_dir_is_an_error(tmp_path, capsys):
    code = main(pairs_arguments(tmp_path / "x", "--data_dir", str(REDDIT_DIR)))
    assert code == 2
    assert "--data_dir is only used with the reddit and prism datasets; for pairs use --input FILE" in capsys.readouterr().err


@pytest.mark.parametrize(("dataset", "data_dir"), [("reddit", REDDIT_DIR), ("prism", PRISM_DIR)])
def test_main_warns_when_one_user_kept(tmp_path, caplog, dataset, data_dir):
    caplog.set_level("WARNING", logger="mrm.prepare")
    code = main([dataset, "--data_dir", str(data_dir), "--encoder", "demo", "--out", str(tmp_path / dataset),
                 "--max_users", "1"])
    messages = [record.getMessage() for record in caplog.records if record.name == "mrm.prepare"]
    assert code == 0
    assert len(messages) == 1
    assert "is not usable by train or evaluate yet" in messages[0]
    assert "raise --max_users to include more users, or leave it unset" in messages[0]


def test_main_no_warning_for_full_prism_fixture(tmp_path, caplog):
    caplog.set_level("WARNING", logger="mrm.prepare")
    assert main(["prism", "--data_dir", str(PRISM_DIR), "--encoder", "demo", "--out", str(tmp_path / "prism")]) == 0
    assert [record.getMessage() for record in caplog.records if record.name == "mrm.prepare"] == []


def test_split_warnings_prism_without_max_users():
    messages = split_warnings({"u": [{"split": "train"}, {"split": "val"}]}, Path("x.json"), "prism")
    assert "participants who have 6 or more conversations" in messages[0]


def test_split_warnings_pairs_max_users_one():
    users = {"ann": [{"split": "train"}, {"split": "val"}]}
    messages = split_warnings(users, Path("x.json"), "pairs", max_users=1)
    assert "raise --max_users" in messages[0]


@pytest.mark.parametrize(("device", "message"), [
    ("bogus", "--device 'bogus' is not a device name"),
    ("tpu", "--device 'tpu' is not"),
])
def test_main_rejects_invalid_device(tmp_path, capsys, device, message):
    code = main(["pairs", "--input", str(FIXTURES / "pairs_valid.csv"), "--encoder", "demo",
                 "--out", str(tmp_path / "x"), "--device", device])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_main_device_cpu_embeds(tmp_path):
    code = main(["pairs", "--input", str(FIXTURES / "pairs_valid.csv"), "--encoder", "demo",
                 "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert code == 0
    assert (tmp_path / "x.pt").is_file()


def test_main_device_rejected_with_several_processes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["pairs", "--input", str(FIXTURES / "pairs_valid.csv"), "--encoder", "demo",
                 "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert code == 2
    assert "multi-process launch" in capsys.readouterr().err


def test_main_rejects_data_revision_with_pairs(tmp_path, capsys):
    code = main(["pairs", "--input", str(FIXTURES / "pairs_valid.csv"), "--encoder", "demo",
                 "--out", str(tmp_path / "x"), "--data_revision", "v1"])
    assert code == 2
    assert "--data_revision picks a revision of the Hub dataset" in capsys.readouterr().err


def test_main_rejects_data_revision_with_data_dir(tmp_path, capsys):
    code = main(["prism", "--data_dir", str(tmp_path), "--encoder", "demo", "--out", str(tmp_path / "out" / "x"),
                 "--data_revision", "v1"])
    assert code == 2
    assert "no effect with --data_dir" in capsys.readouterr().err
