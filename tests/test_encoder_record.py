"""The encoder record that `embed` writes beside an embedding file, and where it is used."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from synthetic import make_population

from mrm.cli import main
from mrm.data import encoder_record_path, read_encoder_record, write_encoder_record
from mrm.model import MRM, save_mrm


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A pairs file of four users embedded with the demo encoder."""
    folder = tmp_path_factory.mktemp("record")
    with open(folder / "pairs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "chosen", "rejected", "user_id"])
        for user in range(4):
            for k in range(6):
                writer.writerow([f"Post {k} about topic {user}.", f"A detailed summary {k}.", f"Short {k}.", f"u{user}"])
    code = main(["embed", "pairs", "--input", str(folder / "pairs.csv"), "--encoder", "demo",
                 "--out", str(folder / "mine"), "--val_fraction", "0.34"])
    assert code == 0
    return folder


def test_embed_writes_encoder_record(embedded):
    record = json.loads((embedded / "mine.encoder.json").read_text())
    assert record["encoder_id"] == "demo"
    assert record["hidden_size"] == torch.load(embedded / "mine.pt").shape[1]


@pytest.fixture(scope="module")
def trained_run(embedded):
    code = main(["train", "--embed_pt", str(embedded / "mine.pt"), "--meta_json", str(embedded / "mine.json"),
                 "--epochs", "2", "--log_freq", "1", "--output_path", str(embedded / "run")])
    assert code == 0
    return embedded / "run"


def test_train_records_encoder_in_checkpoint(trained_run):
    config = json.loads((trained_run / "best" / "config.json").read_text())
    assert config["encoder_id"] == "demo"


def test_push_card_names_recorded_encoder(trained_run, tmp_path):
    main(["push", str(trained_run), "--repo_id", "me/mine", "--card_only", str(tmp_path / "card.md")])
    assert "| Encoder (embedding model) | `demo` |" in (tmp_path / "card.md").read_text()


def test_evaluate_warns_on_other_encoder(tmp_path, capsys):
    pt, js = make_population(tmp_path / "pop", num_users=6, dim=16, train_pairs=8, test_pairs=4)
    write_encoder_record(pt, "org/other-encoder", None, 16)
    save_mrm(MRM(16, [2]), tmp_path / "ckpt", extra_config={"encoder_id": "org/encoder"})
    code = main(["evaluate", "--embed_pt", str(pt), "--meta_json", str(js), "--ckpt", str(tmp_path / "ckpt")])
    assert code == 0
    assert "was embedded with org/other-encoder" in capsys.readouterr().err


def test_evaluate_silent_on_same_encoder(tmp_path, capsys):
    pt, js = make_population(tmp_path / "pop", num_users=6, dim=16, train_pairs=8, test_pairs=4)
    write_encoder_record(pt, "org/encoder", None, 16)
    save_mrm(MRM(16, [2]), tmp_path / "ckpt", extra_config={"encoder_id": "org/encoder"})
    main(["evaluate", "--embed_pt", str(pt), "--meta_json", str(js), "--ckpt", str(tmp_path / "ckpt")])
    assert "was embedded with" not in capsys.readouterr().err


def test_record_path_sits_beside_tensor(tmp_path):
    assert encoder_record_path(tmp_path / "data.v2.pt") == tmp_path / "data.v2.encoder.json"


def test_malformed_record_is_ignored(tmp_path, caplog):
    encoder_record_path(tmp_path / "d.pt").write_text("{not json")
    assert read_encoder_record(tmp_path / "d.pt") is None
    assert "ignoring the encoder record" in caplog.text


def test_missing_record_reads_as_none(tmp_path):
    assert read_encoder_record(tmp_path / "published.pt") is None
