"""`python -m mrm push` on run folders built in the tests; nothing reaches the network."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import constants

from mrm.cli import main
from mrm.model import MRM, save_mrm

RESULTS = {"seen": 0.75, "unseen": 0.7, "overall": 0.725, "worst10": 0.5, "std": 0.1, "num_seen": 4, "num_unseen": 4,
           "init": {"seen": 0.6, "unseen": 0.55, "overall": 0.575, "worst10": 0.4},
           "selected_on": "val: held-out training pairs of unseen users (test pairs untouched)", "best_epoch": 3}
TRAINING = {"embed_pt": "/home/someone/data.pt", "meta_json": "/home/someone/data.json", "inner_lr": 0.5,
            "output_path": "/home/someone/run", "seed": 0}


@pytest.fixture
def run_folder(tmp_path):
    run = tmp_path / "run"
    save_mrm(MRM(16, [3]), run / "best", extra_config={"training": TRAINING, "epoch": 3})
    (run / "results.json").write_text(json.dumps(RESULTS))
    (run / "progress.json").write_text(json.dumps({"status": "done", "epoch": 5, "epochs": 5}))
    return run


@pytest.fixture
def no_token(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def test_push_card_only_from_run_folder(run_folder, tmp_path, capsys):
    card_path = tmp_path / "card.md"
    code = main(["push", str(run_folder), "--repo_id", "me/mrm-test", "--encoder", "org/encoder", "--card_only", str(card_path)])
    card = card_path.read_text()
    assert code == 0
    assert "nothing was uploaded" in capsys.readouterr().out
    assert "| All users | 72.5% | 57.5% |" in card
    assert "`org/encoder`" in card
    assert "| `inner_lr` | `0.5` |" in card


def test_push_card_leaves_out_local_paths(run_folder, tmp_path):
    main(["push", str(run_folder / "best"), "--repo_id", "me/mrm-test", "--card_only", str(tmp_path / "card.md")])
    assert "/home/someone" not in (tmp_path / "card.md").read_text()


def test_push_card_of_best_folder_finds_results(run_folder, tmp_path):
    main(["push", str(run_folder / "best"), "--repo_id", "me/mrm-test", "--card_only", str(tmp_path / "card.md")])
    assert "Epoch 3 was selected on `val` data" in (tmp_path / "card.md").read_text()


def test_push_warns_without_encoder(run_folder, tmp_path, caplog):
    main(["push", str(run_folder), "--repo_id", "me/mrm-test", "--card_only", str(tmp_path / "card.md")])
    assert "pass --encoder" in caplog.text


def test_push_rejects_revision_in_repo_id(run_folder, capsys):
    assert main(["push", str(run_folder), "--repo_id", "me/mrm-test@dev"]) == 2
    assert "--revision" in capsys.readouterr().err


def test_push_rejects_missing_checkpoint(tmp_path, capsys):
    assert main(["push", str(tmp_path / "absent"), "--repo_id", "me/mrm-test"]) == 2
    assert "error:" in capsys.readouterr().err


def test_push_without_token_names_the_fix(run_folder, no_token, capsys):
    assert main(["push", str(run_folder), "--repo_id", "me/mrm-test", "--encoder", "demo"]) == 1
    assert "no Hugging Face token" in capsys.readouterr().err
