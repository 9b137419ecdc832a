import hashlib
import json
import random

import pytest
import torch

from mrm.data import (
    DataError,
    build_user_splits,
    read_embedding_files,
    select_train_pairs,
    split_seen_unseen,
    support_query_split,
    write_embedding_files,
)


def hand_made(tmp_path, rows=40, users=None):
    """Four users; 'carol' has no test pairs, others have train pairs 0..k and 2 test pairs."""
    users = users or {
        "bob": [{"chosen_idx": 2 * i, "rejected_idx": 2 * i + 1, "split": "train"} for i in range(6)]
        + [{"chosen_idx": 12, "rejected_idx": 13, "split": "val"}, {"chosen_idx": 14, "rejected_idx": 15, "split": "val"}],
        "alice": [{"chosen_idx": 16 + 2 * i, "rejected_idx": 17 + 2 * i, "split": "train"} for i in range(4)]
        + [{"chosen_idx": 24, "rejected_idx": 25, "split": "val"}],
        "carol": [{"chosen_idx": 26, "rejected_idx": 27, "split": "train"}],
        "dave": [{"chosen_idx": 28, "rejected_idx": 29, "split": "train"}, {"chosen_idx": 30, "rejected_idx": 31, "split": "val"}],
    }
    return write_embedding_files(tmp_path / "data", torch.randn(rows, 8), users)


def test_seen_unseen_split_matches_published_rule():
    ids = ["u3", "u1", "u2", "u0", "u4"]
    expected = sorted(ids)
    random.Random(7).shuffle(expected)
    assert split_seen_unseen(ids, seed=7) == (expected[:2], expected[2:])


def test_train_cap_uses_md5_seeded_generator():
    entries = [{"chosen_idx": i} for i in range(10)]
    seed = 42 + int(hashlib.md5(b"worker-9").hexdigest(), 16) % 2**32
    expected = list(entries)
    random.Random(seed).shuffle(expected)
    assert select_train_pairs(entries, "worker-9", 42, limit=4) == expected[:4]


def test_train_cap_minus_one_keeps_all():
    entries = [{"chosen_idx": i} for i in range(10)]
    assert len(select_train_pairs(entries, "w", 1, limit=-1)) == 10


def test_support_query_split_published_rule():
    ids = list(range(10))
    random.Random(42 + 3 + 1000 * 2).shuffle(ids)
    support, query = support_query_split(10, seed=42, user_index=3, epoch=2, val_ratio=0.9)
    assert (query, support) == (ids[:9], ids[9:])


def test_support_query_single_group_uses_it_for_both():
    assert support_query_split(1, 0, 0, 1, 0.9) == ([0], [0])


def test_support_query_redrawn_each_epoch():
    assert support_query_split(20, 0, 0, 1, 0.5) != support_query_split(20, 0, 0, 2, 0.5)


def test_build_splits_skips_user_without_test_pairs(tmp_path):
    data = read_embedding_files(*hand_made(tmp_path))
    splits = build_user_splits(data, seed=0)
    assert splits.skipped == {"carol": "no test pairs"}


def test_build_splits_seen_assignment_ignores_skipping(tmp_path):
    data = read_embedding_files(*hand_made(tmp_path))
    splits = build_user_splits(data, seed=0)
    expected_seen, _ = split_seen_unseen(["alice", "bob", "carol", "dave"], 0)
    assert [u.user_id for u in splits.seen] == [u for u in expected_seen if u != "carol"]


def test_build_splits_caps_seen_and_unseen(tmp_path):
    data = read_embedding_files(*hand_made(tmp_path))
    splits = build_user_splits(data, seed=0, seen_train_limit=2, unseen_train_limit=3)
    assert all(u.num_train <= 2 for u in splits.seen)
    assert all(u.num_train <= 3 for u in splits.unseen)


def test_build_splits_keeps_test_pairs_in_file_order(tmp_path):
    data = read_embedding_files(*hand_made(tmp_path))
    bob = next(u for u in build_user_splits(data, seed=0).all_users if u.user_id == "bob")
    assert bob.test_chosen.tolist() == [12, 14]


def test_prism_groups_follow_conversations(tmp_path):
    users = {
        "p1": [{"chosen_idx": 2 * i, "rejected_idx": 2 * i + 1, "split": "train", "conversation_id": f"c{i // 2}"} for i in range(6)]
        + [{"chosen_idx": 12, "rejected_idx": 13, "split": "val", "conversation_id": "c9"}],
        "p2": [{"chosen_idx": 14, "rejected_idx": 15, "split": "train", "conversation_id": "d0"},
               {"chosen_idx": 16, "rejected_idx": 17, "split": "val", "conversation_id": "d1"}],
    }
    data = read_embedding_files(*write_embedding_files(tmp_path / "prism", torch.randn(20, 4), users))
    p1 = next(u for u in build_user_splits(data, seed=0, dataset="PRISM").all_users if u.user_id == "p1")
    assert sorted(set(p1.train_groups)) == [0, 1, 2]


def test_nan_rows_drop_their_pairs(tmp_path):
    pt, js = hand_made(tmp_path)
    embeddings = torch.load(pt)
    embeddings[12] = float("nan")
    torch.save(embeddings, pt)
    bob = next(u for u in build_user_splits(read_embedding_files(pt, js), seed=0).all_users if u.user_id == "bob")
    assert bob.test_chosen.tolist() == [14]


def test_index_out_of_range_is_named(tmp_path):
    users = {"u": [{"chosen_idx": 0, "rejected_idx": 99, "split": "train"}]}
    torch.save(torch.randn(4, 8), tmp_path / "d.pt")
    (tmp_path / "d.json").write_text(json.dumps(users))
    with pytest.raises(DataError, match="rejected_idx=99 is out of range for an embedding tensor of 4 rows"):
        read_embedding_files(tmp_path / "d.pt", tmp_path / "d.json")


def test_empty_embedding_file_is_rejected(tmp_path):
    (tmp_path / "d.pt").write_bytes(b"")
    (tmp_path / "d.json").write_text("{}")
    with pytest.raises(DataError, match="is empty"):
        read_embedding_files(tmp_path / "d.pt", tmp_path / "d.json")


def test_malformed_json_is_rejected(tmp_path):
    torch.save(torch.randn(4, 8), tmp_path / "d.pt")
    (tmp_path / "d.json").write_text('{"u": [ {"chosen_idx": 0,')
    with pytest.raises(DataError, match="not valid JSON"):
        read_embedding_files(tmp_path / "d.pt", tmp_path / "d.json")


def test_bad_split_value_is_rejected(tmp_path):
    torch.save(torch.randn(4, 8), tmp_path / "d.pt")
    (tmp_path / "d.json").write_text(json.dumps({"u": [{"chosen_idx": 0, "rejected_idx": 1, "split": "test"}]}))
    with pytest.raises(DataError, match="split='test'"):
        read_embedding_files(tmp_path / "d.pt", tmp_path / "d.json")


def test_no_usable_seen_users_is_an_error(tmp_path):
    users = {f"u{i}": [{"chosen_idx": 0, "rejected_idx": 1, "split": "train"}] for i in range(4)}
    data = read_embedding_files(*write_embedding_files(tmp_path / "d", torch.randn(2, 4), users))
    with pytest.raises(DataError, match="no usable seen users"):
        build_user_splits(data, seed=0)


def test_prism_entries_without_split_get_conversation_split(tmp_path):
    conversations = [f"c{i}" for i in range(6)]
    users = {"p1": [{"chosen_idx": 2 * i, "rejected_idx": 2 * i + 1, "conversation_id": conv} for i, conv in enumerate(conversations)],
             "p2": [{"chosen_idx": 12, "rejected_idx": 13, "conversation_id": "d0"}, {"chosen_idx": 14, "rejected_idx": 15, "conversation_id": "d1"}]}
    data = read_embedding_files(*write_embedding_files(tmp_path / "prism", torch.randn(16, 4), users))
    p1 = next(u for u in build_user_splits(data, seed=42, dataset="PRISM").all_users if u.user_id == "p1")
    shuffled = list(conversations)
    random.Random(42 + int(hashlib.md5(b"p1").hexdigest(), 16) % 2**32).shuffle(shuffled)
    expected_test_rows = sorted(2 * conversations.index(c) for c in shuffled[3:])
    assert sorted(p1.test_chosen.tolist()) == expected_test_rows


def test_reddit_entries_without_split_are_rejected(tmp_path):
    users = {f"u{i}": [{"chosen_idx": 0, "rejected_idx": 1, "conversation_id": "c"}] for i in range(2)}
    data = read_embedding_files(*write_embedding_files(tmp_path / "d", torch.randn(2, 4), users))
    with pytest.raises(DataError, match="only PRISM files may omit it"):
        build_user_splits(data, seed=0)


def test_embedding_file_bytes_are_reproducible(tmp_path):
    users = {"u": [{"chosen_idx": 0, "rejected_idx": 1, "split": "train"}]}
    first = write_embedding_files(tmp_path / "a", torch.ones(3, 4), users)[0].read_bytes()
    second = write_embedding_files(tmp_path / "a", torch.ones(3, 4), users)[0].read_bytes()
    assert first == second


def published_conversation_order(conversations, user_id, seed):
    shuffled = list(conversations)
    random.Random(seed + int(hashlib.md5(user_id.encode()).hexdigest(), 16) % 2**32).shuffle(shuffled)
    return shuffled


def prism_user(conversations, pairs_per_conversation, test_conversations=("t0",), scores=None):
    """Entries of one PRISM user: `pairs_per_conversation` training pairs per conversation, one test pair each."""
    entries, row = [], 0
    for conv in conversations:
        for k in range(pairs_per_conversation):
            entry = {"chosen_idx": row, "rejected_idx": row + 1, "split": "train", "conversation_id": conv}
            if scores is not None:
                entry["chosen_score"], entry["rejected_score"] = scores[(conv, k)]
            entries.append(entry)
            row += 2
    for conv in test_conversations:
        entries.append({"chosen_idx": row, "rejected_idx": row + 1, "split": "val", "conversation_id": conv,
                        "chosen_score": 0.0, "rejected_score": 5.0})
        row += 2
    return entries, row


def prism_splits(tmp_path, user_entries, rows, **options):
    users = {"p1": user_entries, "p2": [{"chosen_idx": 0, "rejected_idx": 1, "split": "train", "conversation_id": "x",
                                         "chosen_score": 5.0, "rejected_score": 1.0},
                                        {"chosen_idx": 2, "rejected_idx": 3, "split": "val", "conversation_id": "y"}]}
    data = read_embedding_files(*write_embedding_files(tmp_path / "prism", torch.randn(rows, 4), users))
    return next(u for u in build_user_splits(data, dataset="PRISM", **options).all_users if u.user_id == "p1")


def test_prism_training_pairs_follow_published_order(tmp_path):
    conversations = [f"c{i}" for i in range(5)]
    entries, rows = prism_user(conversations, pairs_per_conversation=2)
    p1 = prism_splits(tmp_path, entries, rows, seed=42)
    # Conversation order of the published code: all of the user's conversations, shuffled; training ones kept.
    order = [c for c in published_conversation_order([*conversations, "t0"], "p1", 42) if c != "t0"]
    expected_rows = [4 * conversations.index(c) + 2 * k for c in order for k in range(2)]
    assert p1.train_chosen.tolist() == expected_rows
    assert p1.train_groups == [g for g in range(5) for _ in range(2)]


def test_prism_cap_counts_conversations(tmp_path):
    conversations = [f"c{i}" for i in range(5)]
    entries, rows = prism_user(conversations, pairs_per_conversation=3)
    p1 = prism_splits(tmp_path, entries, rows, seed=42, seen_train_limit=2, unseen_train_limit=2)
    order = [c for c in published_conversation_order([*conversations, "t0"], "p1", 42) if c != "t0"]
    assert p1.num_train == 6
    assert {row // 6 for row in p1.train_chosen.tolist()} == {conversations.index(c) for c in order[:2]}


def test_prism_published_threshold_keeps_every_pair(tmp_path):
    scores = {("c0", 0): (1.0, 4.0), ("c1", 0): (2.0, 2.0)}  # chosen scored below rejected; a tie
    entries, rows = prism_user(["c0", "c1"], pairs_per_conversation=1, scores=scores)
    p1 = prism_splits(tmp_path, entries, rows, seed=42, score_threshold=-1)
    assert p1.num_train == 2
    assert p1.num_test == 1


def test_prism_threshold_filters_training_pairs_only(tmp_path):
    scores = {("c0", 0): (1.0, 4.0), ("c1", 0): (2.0, 2.2), ("c2", 0): (3.0, 1.0)}
    entries, rows = prism_user(["c0", "c1", "c2"], pairs_per_conversation=1, scores=scores)
    p1 = prism_splits(tmp_path, entries, rows, seed=42, score_threshold=0.5)
    assert sorted(p1.train_chosen.tolist()) == [0, 4]  # |gap| 3 and 2 pass; 0.2 does not
    assert p1.train_groups == [0, 1]
    assert p1.num_test == 1  # its gap of -5 is not filtered


def test_reddit_ignores_score_threshold(tmp_path, caplog):
    users = {f"u{i}": [{"chosen_idx": 0, "rejected_idx": 1, "split": "train", "chosen_score": 1.0, "rejected_score": 1.0},
                       {"chosen_idx": 2, "rejected_idx": 3, "split": "val"}] for i in range(2)}
    data = read_embedding_files(*write_embedding_files(tmp_path / "d", torch.randn(4, 4), users))
    splits = build_user_splits(data, seed=0, score_threshold=0.5)
    assert [u.num_train for u in splits.all_users] == [1, 1]
    assert "ignored for REDDIT" in caplog.text


def test_nan_pair_does_not_change_other_selected_pairs(tmp_path):
    users = {f"u{i}": [{"chosen_idx": 2 * k, "rejected_idx": 2 * k + 1, "split": "train"} for k in range(10)]
             + [{"chosen_idx": 20, "rejected_idx": 21, "split": "val"}] for i in range(2)}
    pt, js = write_embedding_files(tmp_path / "d", torch.randn(22, 4), users)
    clean = {u.user_id: u for u in build_user_splits(read_embedding_files(pt, js), seed=0, seen_train_limit=4).all_users}
    victim = int(clean["u0"].train_chosen[1])
    embeddings = torch.load(pt)
    embeddings[victim] = float("nan")
    torch.save(embeddings, pt)
    dirty = {u.user_id: u for u in build_user_splits(read_embedding_files(pt, js), seed=0, seen_train_limit=4).all_users}
    expected = [row for row in clean["u0"].train_chosen.tolist() if row != victim]
    assert dirty["u0"].train_chosen.tolist() == expected


def test_prism_threshold_drops_unrated_pairs(tmp_path):
    scores = {("c0", 0): (None, 4.0), ("c1", 0): (1.0, 4.0)}
    entries, rows = prism_user(["c0", "c1"], pairs_per_conversation=1, scores=scores)
    p1 = prism_splits(tmp_path, entries, rows, seed=42, score_threshold=1.0)
    assert p1.train_chosen.tolist() == [2]


def test_prism_negative_threshold_keeps_unrated_pairs(tmp_path):
    scores = {("c0", 0): (None, 4.0), ("c1", 0): (1.0, 4.0)}
    entries, rows = prism_user(["c0", "c1"], pairs_per_conversation=1, scores=scores)
    p1 = prism_splits(tmp_path, entries, rows, seed=42, score_threshold=-1)
    assert p1.num_train == 2


def test_single_user_error_explains_minimum(tmp_path):
    users = {"u0": [{"chosen_idx": 0, "rejected_idx": 1, "split": "train"}, {"chosen_idx": 2, "rejected_idx": 3, "split": "val"}]}
    data = read_embedding_files(*write_embedding_files(tmp_path / "d", torch.randn(4, 4), users))
    with pytest.raises(DataError, match="need at least 2 users") as error:
        build_user_splits(data, seed=0)
    assert "skipped" not in str(error.value)
