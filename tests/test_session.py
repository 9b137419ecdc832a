"""Unit tests of the Personalize tab's event logic (`mrm.session`) and mode selection (`mrm.runtime`).

They run the real demo encoder with the committed demo checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys
from pathlib import Path

import pytest
import torch

from mrm import session
from mrm.model import MRM, save_mrm
from mrm.runtime import (
    DEMO_CHECKPOINT,
    GPU_CHECKPOINT,
    GPU_ENCODER,
    AppConfig,
    ModeChoice,
    RuntimeConfigError,
    check_widths,
    choose_mode,
    load_runtime,
    parse_app_args,
)
from mrm.session import InputError

POST = "My landlord wants to raise the rent by 20% and I am not sure whether to move out or negotiate."
SUMMARY_A = "Landlord raising rent 20%, should I move or negotiate?"
SUMMARY_B = "Rent going up a lot."


def no_hub_check() -> bool:
    raise AssertionError("the Hub must not be contacted here")


@pytest.fixture(scope="module")
def runtime():
    # offline=False keeps load_runtime from changing this process's environment.
    mode = ModeChoice(encoder="demo", checkpoint=DEMO_CHECKPOINT, device="cpu", offline=False, reason="test")
    return load_runtime(mode)


@pytest.fixture
def labels() -> list[dict[str, str]]:
    return [
        {"prompt": POST, "chosen": SUMMARY_A, "rejected": SUMMARY_B},
        {"prompt": "I adopted a cat that hides all day.", "chosen": "New cat hides, how to help?",
         "rejected": "Cat."},
        {"prompt": "Should I learn piano or guitar first at 40?", "chosen": "40, piano or guitar first?",
         "rejected": "Music question."},
    ]


# ----------------------------------------------------------------------------- mode selection


def test_choose_mode_forced_offline_skips_hub():
    mode = choose_mode(AppConfig(offline=True), environ={}, cuda_available=lambda: True, check_hub=no_hub_check)
    assert mode.offline
    assert mode.encoder == "demo"
    assert mode.checkpoint == DEMO_CHECKPOINT
    assert "forced" in mode.reason


def test_choose_mode_hf_hub_offline_skips_hub():
    mode = choose_mode(AppConfig(), environ={"HF_HUB_OFFLINE": "1"}, cuda_available=lambda: True,
                       check_hub=no_hub_check)
    assert mode.offline
    assert "HF_HUB_OFFLINE" in mode.reason


def test_choose_mode_no_cuda_skips_hub():
    mode = choose_mode(AppConfig(), environ={}, cuda_available=lambda: False, check_hub=no_hub_check)
    assert mode.offline
    assert mode.reason == "offline demo: no CUDA device"


def test_choose_mode_unreachable_hub():
    mode = choose_mode(AppConfig(), environ={}, cuda_available=lambda: True, check_hub=lambda: False)
    assert mode.offline
    assert "not reachable" in mode.reason


def test_choose_mode_gpu_mode():
    mode = choose_mode(AppConfig(), environ={}, cuda_available=lambda: True, check_hub=lambda: True)
    assert not mode.offline
    assert mode.encoder == GPU_ENCODER
    assert mode.checkpoint == GPU_CHECKPOINT
    assert mode.device == "cuda"


def test_choose_mode_explicit_overrides():
    config = AppConfig(encoder="my/encoder", checkpoint="/tmp/ckpt", device="cpu")
    mode = choose_mode(config, environ={}, cuda_available=lambda: True, check_hub=lambda: True)
    assert (mode.encoder, mode.checkpoint, mode.device) == ("my/encoder", "/tmp/ckpt", "cpu")
    assert "encoder, checkpoint, device set explicitly" in mode.reason


def test_parse_app_args_environment_fallback():
    environ = {"MRM_ENCODER": "demo", "MRM_CHECKPOINT": "ckpt", "MRM_DEVICE": "cpu", "MRM_OFFLINE": "1"}
    config = parse_app_args([], environ=environ)
    assert config == AppConfig(encoder="demo", checkpoint="ckpt", device="cpu", offline=True)


def test_parse_app_args_flags_beat_environment():
    config = parse_app_args(["--encoder", "flag-encoder", "--port", "8123"], environ={"MRM_ENCODER": "env"})
    assert config.encoder == "flag-encoder"
    assert config.port == 8123


@pytest.mark.parametrize("port", ["0", "99999", "-1", "http"])
def test_parse_app_args_rejects_invalid_port(port, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_app_args(["--port", port], environ={})
    assert exit_info.value.code == 2
    assert "invalid port" in capsys.readouterr().err


def test_apply_offline_environment_sets_flags(monkeypatch):
    import huggingface_hub.constants

    from mrm.runtime import apply_offline_environment

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    apply_offline_environment()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True


def test_gpu_decorator_uses_spaces_when_installed(monkeypatch):
    import types

    from mrm.runtime import _gpu_decorator

    fake_spaces = types.ModuleType("spaces")
    fake_spaces.GPU = lambda function: function
    monkeypatch.setitem(sys.modules, "spaces", fake_spaces)
    assert _gpu_decorator() is fake_spaces.GPU


def test_gpu_decorator_without_spaces_is_identity(monkeypatch):
    from mrm.runtime import _gpu_decorator

    monkeypatch.setitem(sys.modules, "spaces", None)  # makes `import spaces` raise ImportError
    assert _gpu_decorator()(len) is len


def test_check_widths_message_names_both_widths():
    with pytest.raises(RuntimeConfigError) as raised:
        check_widths("demo", 771, "org/ckpt", 4096)
    assert "771" in str(raised.value)
    assert "in_dim=4096" in str(raised.value)
    assert "--checkpoint" in str(raised.value)


def test_load_runtime_rejects_wrong_width(tmp_path):
    save_mrm(MRM(in_dim=16, hidden_layers=(2,)), tmp_path)
    mode = ModeChoice(encoder="demo", checkpoint=str(tmp_path), device="cpu", offline=False, reason="test")
    with pytest.raises(RuntimeConfigError, match="in_dim=16"):
        load_runtime(mode)


def test_load_runtime_missing_demo_checkpoint(tmp_path, monkeypatch):
    import mrm.runtime

    missing = str(tmp_path / "absent")
    monkeypatch.setattr(mrm.runtime, "DEMO_CHECKPOINT", missing)
    mode = ModeChoice(encoder="demo", checkpoint=missing, device="cpu", offline=False, reason="test")
    with pytest.raises(RuntimeConfigError, match="demo checkpoint is missing"):
        load_runtime(mode)


# ----------------------------------------------------------------------------- labels


def test_add_label_a_is_chosen():
    labels, message = session.add_label([], POST, SUMMARY_A, SUMMARY_B, "A")
    assert labels == [{"prompt": POST, "chosen": SUMMARY_A, "rejected": SUMMARY_B}]
    assert "1" in message


def test_add_label_b_is_chosen():
    labels, _ = session.add_label([], POST, SUMMARY_A, SUMMARY_B, "B")
    assert labels[0]["chosen"] == SUMMARY_B
    assert labels[0]["rejected"] == SUMMARY_A


def test_add_label_skip_keeps_labels(labels):
    new_labels, message = session.add_label(labels, POST, SUMMARY_A, SUMMARY_B, "skip")
    assert new_labels == labels
    assert "Skipped" in message


def test_add_label_does_not_mutate_input(labels):
    before = [dict(pair) for pair in labels]
    session.add_label(labels, POST, "new one", "new two", "A")
    assert labels == before


@pytest.mark.parametrize(
    ("prompt", "summary_a", "summary_b", "expected"),
    [
        (POST, SUMMARY_A, SUMMARY_A, "identical"),
        (POST, "  ", SUMMARY_B, "empty"),
        ("", SUMMARY_A, SUMMARY_B, "post is empty"),
        (POST, "x" * (session.MAX_TEXT_CHARS + 1), SUMMARY_B, "limit"),
    ],
)
def test_add_label_rejects_bad_text(prompt, summary_a, summary_b, expected):
    with pytest.raises(InputError, match=expected):
        session.add_label([], prompt, summary_a, summary_b, "A")


def test_add_label_unknown_choice():
    with pytest.raises(InputError, match="Unknown choice"):
        session.add_label([], POST, SUMMARY_A, SUMMARY_B, "C")


def test_rows_to_labels_cleared_row_is_deleted(labels):
    rows = session.labels_to_rows(labels)
    rows[1][2] = ""
    new_labels, message = session.rows_to_labels(rows)
    assert new_labels == [labels[0], labels[2]]
    assert "Removed 1" in message


def test_rows_to_labels_reads_client_dict(labels):
    payload = {"headers": session.LABEL_COLUMNS, "data": session.labels_to_rows(labels)}
    new_labels, _ = session.rows_to_labels(payload)
    assert new_labels == labels


def test_rows_to_labels_invalid_edit_names_row(labels):
    rows = session.labels_to_rows(labels)
    rows[2][1] = rows[2][2]
    with pytest.raises(InputError, match="Row 3"):
        session.rows_to_labels(rows)


def test_rows_to_labels_reads_dataframe(labels):
    new_labels, _ = session.rows_to_labels(session.labels_to_frame(labels))
    assert new_labels == labels


def test_add_label_empty_summary_named_as_on_page():
    # Summary A becomes the rejected text when B is chosen; the message still names the field.
    with pytest.raises(InputError, match="^Summary A is empty"):
        session.add_label([], POST, "", SUMMARY_B, "B")


def test_add_label_long_summary_named_as_on_page():
    with pytest.raises(InputError, match="^Summary B has"):
        session.add_label([], POST, SUMMARY_A, "x" * (session.MAX_TEXT_CHARS + 1), "A")


@pytest.mark.parametrize(("count", "expected"), [(0, "0 pairs"), (1, "1 pair"), (2, "2 pairs")])
def test_plural_counts(count, expected):
    assert session.plural(count, "pair") == expected


def test_rows_to_labels_one_pair_singular(labels):
    _, message = session.rows_to_labels(session.labels_to_rows(labels[:1]))
    assert message == "1 labelled pair."


def test_rows_to_labels_rejects_other_headers(labels):
    frame = session.labels_to_frame(labels).rename(columns={"chosen": "better"})
    with pytest.raises(InputError, match="expected"):
        session.rows_to_labels(frame)


def test_rows_to_labels_rejects_other_client_headers(labels):
    payload = {"headers": ["a", "b", "c"], "data": session.labels_to_rows(labels)}
    with pytest.raises(InputError, match="columns"):
        session.rows_to_labels(payload)


def test_rows_to_labels_rejects_mojibake_row(labels):
    rows = session.labels_to_rows(labels)
    rows[1][0] = "Caf\ufffd au lait"
    with pytest.raises(InputError, match="^Row 2 contains undecodable"):
        session.rows_to_labels(rows)


def test_clear_labels_first_click_keeps_labels(labels):
    kept, armed_at, message = session.clear_labels(labels, None, now=100.0)
    assert kept == labels
    assert armed_at == 100.0
    assert "again" in message


def test_clear_labels_second_click_clears(labels):
    kept, armed_at, message = session.clear_labels(labels, 100.0, now=105.0)
    assert kept == []
    assert armed_at is None
    assert "Cleared 3 labelled pairs" in message


def test_clear_labels_late_second_click_rearms(labels):
    kept, armed_at, _ = session.clear_labels(labels, 100.0, now=100.0 + session.CLEAR_CONFIRM_S + 1)
    assert kept == labels
    assert armed_at == 100.0 + session.CLEAR_CONFIRM_S + 1


def test_clear_labels_nothing_to_clear():
    kept, armed_at, message = session.clear_labels([], None, now=1.0)
    assert (kept, armed_at) == ([], None)
    assert "no labelled pairs" in message


def test_undo_clear_puts_labels_first(labels):
    restored, message = session.undo_clear(labels[2:], labels[:2])
    assert restored == labels
    assert "2 labelled pairs" in message


def test_undo_clear_without_cleared_labels(labels):
    with pytest.raises(InputError, match="no cleared"):
        session.undo_clear(labels, [])


def test_delete_row_removes_that_row(labels):
    new_labels, _ = session.delete_row(labels, 2)
    assert new_labels == [labels[0], labels[2]]


@pytest.mark.parametrize("row_number", [0, 4, "two", None])
def test_delete_row_rejects_bad_number(labels, row_number):
    with pytest.raises(InputError):
        session.delete_row(labels, row_number)


def test_restore_labels_drops_malformed(labels):
    stored = [*labels, {"prompt": "p"}, "junk", {"prompt": "p", "chosen": "x", "rejected": "x"}]
    assert session.restore_labels(stored) == labels


def test_restore_labels_non_list():
    assert session.restore_labels({"not": "a list"}) == []


def test_import_pairs_keeps_good_lines(tmp_path, labels):
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps({"prompt": POST, "chosen": "good one", "rejected": "bad one"}), "{not json",
             json.dumps({"prompt": POST, "chosen": "another", "rejected": "worse"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    new_labels, message = session.import_pairs(labels, str(path))
    assert len(new_labels) == len(labels) + 2
    assert "line 2" in message


def test_import_pairs_csv(tmp_path):
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "chosen", "rejected"])
        writer.writerow([POST, SUMMARY_A, SUMMARY_B])
    new_labels, _ = session.import_pairs([], str(path))
    assert new_labels == [{"prompt": POST, "chosen": SUMMARY_A, "rejected": SUMMARY_B}]


def test_import_pairs_non_utf8_is_reported(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("prompt,chosen,rejected\nCaf\xe9 post,Caf\xe9 short,long\n".encode("latin-1"))
    new_labels, message = session.import_pairs([], str(path))
    assert len(new_labels) == 1
    assert "UTF-8" in message


def test_import_pairs_identical_pair_skipped(tmp_path, labels):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": POST, "chosen": "same", "rejected": "same"}) + "\n", encoding="utf-8")
    new_labels, message = session.import_pairs(labels, str(path))
    assert new_labels == labels
    assert "Skipped" in message


def test_import_pairs_no_file():
    with pytest.raises(InputError, match="No file"):
        session.import_pairs([], None)


def test_export_labels_csv_round_trip(tmp_path, labels):
    path = session.export_labels_csv(labels, tmp_path)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == labels


def test_export_labels_csv_empty(tmp_path):
    with pytest.raises(InputError, match="no labelled pairs"):
        session.export_labels_csv([], tmp_path)


def test_pick_example_two_different_summaries():
    from mrm.demo import load_corpus

    prompt, summary_a, summary_b = session.pick_example(load_corpus(), random.Random(0))
    assert prompt
    assert summary_a != summary_b


def test_pick_example_empty_corpus():
    with pytest.raises(InputError, match="no post"):
        session.pick_example([], random.Random(0))


def test_parse_candidates_lines():
    assert session.parse_candidates("one\n\n two \nthree") == ["one", "two", "three"]


def test_parse_candidates_separator_blocks():
    assert session.parse_candidates("first\nline\n---\nsecond") == ["first\nline", "second"]


def test_parse_candidates_list():
    assert session.parse_candidates(["a", " ", "b"]) == ["a", "b"]


# ----------------------------------------------------------------------------- adapt


def test_adapt_profile_no_labels(runtime):
    with pytest.raises(InputError, match="no labelled pairs"):
        session.adapt_profile(runtime, [], 30, 0.1)


@pytest.mark.parametrize(("steps", "lr"), [(0, 0.1), (session.MAX_STEPS + 1, 0.1), (5, 0), (5, "fast"),
                                           (5, float("nan"))])
def test_adapt_profile_rejects_bad_settings(runtime, labels, steps, lr):
    with pytest.raises(InputError):
        session.adapt_profile(runtime, labels, steps, lr)


def test_adapt_profile_moves_weights(runtime, labels):
    outcome = session.adapt_profile(runtime, labels, 30, 0.1)
    change = max(abs(a - b) for a, b in zip(outcome.weights_before, outcome.weights_after))
    assert change > 0.05


def test_adapt_profile_reports_steps(runtime, labels):
    outcome = session.adapt_profile(runtime, labels, 30, 0.1)
    assert len(outcome.support_loss) == 31
    assert len(outcome.support_accuracy) == 31
    assert outcome.num_pairs == 3


def test_adapt_profile_lowers_support_loss(runtime, labels):
    outcome = session.adapt_profile(runtime, labels, 30, 0.1)
    assert outcome.support_loss[-1] < outcome.support_loss[0]


def test_adapt_profile_one_step_singular(runtime, labels):
    outcome = session.adapt_profile(runtime, labels[:1], 1, 0.1)
    assert "on 1 labelled pair with 1 Adam step at" in outcome.message


def test_adapt_profile_one_label(runtime, labels):
    outcome = session.adapt_profile(runtime, labels[:1], 5, 0.1)
    assert outcome.num_pairs == 1
    assert "single pair" in outcome.message


def test_adapt_profile_published_setting_barely_moves(runtime, labels):
    outcome = session.adapt_profile(runtime, labels, session.PUBLISHED_STEPS, session.PUBLISHED_LR)
    moved = max(abs(a - b) for a, b in zip(runtime.init_logits(), outcome.logits))
    assert moved <= session.PUBLISHED_LR * 1.01


def test_weights_frame_rows():
    frame = session.weights_frame([0.5, 0.5], [0.2, 0.8])
    assert len(frame) == 4
    assert set(frame["stage"]) == {"meta-init", "personalised"}


def test_weights_frame_follows_bar_order():
    frame = session.weights_frame([0.1, 0.2, 0.7], [0.3, 0.3, 0.4])
    assert frame["base reward"].tolist() == session.weight_bar_labels(3)


def test_curve_frame_rows():
    frame = session.curve_frame([0.7, 0.6], [0.5, 1.0])
    assert frame["step"].tolist() == [0, 1, 0, 1]


# ----------------------------------------------------------------------------- score


def test_score_candidates_without_profile_equal_rewards(runtime):
    outcome = session.score_candidates(runtime, None, POST, f"{SUMMARY_A}\n{SUMMARY_B}")
    personal = [row[2] for row in outcome.rows]
    init = [row[3] for row in outcome.rows]
    assert personal == init
    assert outcome.flipped == []


def test_score_candidates_ranks_start_at_one(runtime):
    outcome = session.score_candidates(runtime, None, POST, "one\ntwo\nthree")
    assert [row[0] for row in outcome.rows] == [1, 2, 3]


def test_score_candidates_demo_has_no_model_score(runtime):
    outcome = session.score_candidates(runtime, None, POST, "one\ntwo")
    assert outcome.rows[0][5] == "n/a"


def test_score_candidates_reports_flips(runtime):
    # Logits that put all weight on one base reward, then on the other: the orders must differ somewhere.
    lines = ["short", "a much longer and more detailed summary of the post", SUMMARY_A, SUMMARY_B, "rent",
             "landlord wants more money and I might move"]
    candidates = "\n".join(lines)
    k = runtime.num_bases
    flips = []
    for favoured in range(k):
        logits = [-20.0] * k
        logits[favoured] = 20.0
        flips.append(session.score_candidates(runtime, logits, POST, candidates).flipped)
    assert any(flips)


def test_score_candidates_no_candidates(runtime):
    with pytest.raises(InputError, match="no candidates"):
        session.score_candidates(runtime, None, POST, "\n \n")


def test_score_candidates_too_many(runtime):
    text = "\n".join(f"candidate {i}" for i in range(session.MAX_CANDIDATES + 1))
    with pytest.raises(InputError, match="limit"):
        session.score_candidates(runtime, None, POST, text)


def test_score_candidates_wrong_logit_count(runtime):
    with pytest.raises(InputError, match="K="):
        session.score_candidates(runtime, [0.0] * (runtime.num_bases + 1), POST, "one\ntwo")


def test_score_candidates_one_candidate_singular(runtime):
    outcome = session.score_candidates(runtime, None, POST, SUMMARY_A)
    assert outcome.message.startswith("Scored 1 candidate.")


def test_score_candidates_explains_missing_model_score(runtime):
    outcome = session.score_candidates(runtime, None, POST, f"{SUMMARY_A}\n{SUMMARY_B}")
    assert "no reward head" in outcome.message


def test_score_candidates_reward_model_score(tmp_path):
    from tiny_models import build_tiny_reward_model

    encoder_dir = build_tiny_reward_model(tmp_path / "reward_model", hidden_size=32)
    save_mrm(MRM(in_dim=32, hidden_layers=(2,)), tmp_path / "checkpoint")
    mode = ModeChoice(encoder=str(encoder_dir), checkpoint=str(tmp_path / "checkpoint"), device="cpu",
                      offline=False, reason="test")
    outcome = session.score_candidates(load_runtime(mode), None, POST, "one\ntwo")
    assert all(isinstance(row[5], float) for row in outcome.rows)


# ----------------------------------------------------------------------------- profiles


def test_profile_round_trip(runtime, tmp_path):
    logits = [0.25 * i for i in range(runtime.num_bases)]
    path = session.write_profile(runtime, logits, tmp_path)
    loaded, _ = session.read_profile(runtime, path)
    assert loaded == logits


def test_profile_contains_identity(runtime, tmp_path):
    profile = json.loads(session.write_profile(runtime, [0.0] * runtime.num_bases, tmp_path).read_text())
    assert profile["encoder"] == runtime.encoder_id
    assert profile["checkpoint"] == runtime.checkpoint_id
    assert profile["in_dim"] == runtime.in_dim


def test_restore_profile_round_trip(runtime):
    logits = [0.5 * i for i in range(runtime.num_bases)]
    assert session.restore_profile(runtime, session.profile_dict(runtime, logits)) == logits


def test_restore_profile_nothing_stored(runtime):
    assert session.restore_profile(runtime, None) is None


def test_restore_profile_other_checkpoint(runtime):
    profile = {**session.profile_dict(runtime, [0.0] * runtime.num_bases), "checkpoint": "someone/else"}
    assert session.restore_profile(runtime, profile) is None


def test_profile_export_before_adapt(runtime, tmp_path):
    with pytest.raises(InputError, match="adapt"):
        session.write_profile(runtime, None, tmp_path)


@pytest.mark.parametrize(("key", "value"), [("checkpoint", "someone/else"), ("encoder", "other/encoder"),
                                            ("in_dim", 4096)])
def test_profile_import_rejects_other_model(runtime, tmp_path, key, value):
    path = session.write_profile(runtime, [0.0] * runtime.num_bases, tmp_path)
    profile = json.loads(path.read_text())
    profile[key] = value
    path.write_text(json.dumps(profile))
    with pytest.raises(InputError, match=f"made for {key}"):
        session.read_profile(runtime, path)


def test_profile_import_rejects_non_json(runtime, tmp_path):
    path = tmp_path / "profile.json"
    path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(InputError, match="not a UTF-8 JSON"):
        session.read_profile(runtime, path)


def test_profile_import_rejects_nan(runtime, tmp_path):
    path = session.write_profile(runtime, [0.0] * runtime.num_bases, tmp_path)
    text = Path(path).read_text().replace("0.0", "NaN", 1)
    path.write_text(text)
    with pytest.raises(InputError, match="NaN"):
        session.read_profile(runtime, path)


def test_mixture_weights_sum_to_one():
    assert abs(sum(session.mixture_weights([0.3, -1.2, 2.0])) - 1.0) < 1e-6


def test_runtime_encode_returns_cpu_float32(runtime):
    embeddings, scores = runtime.encode([POST], [SUMMARY_A])
    assert embeddings.dtype == torch.float32
    assert embeddings.device.type == "cpu"
    assert embeddings.shape == (1, runtime.in_dim)
    assert scores is None
