import json
import subprocess
import sys

import pytest
import torch
from synthetic import make_population

from mrm.cli import build_parser, config_from_args, main
from mrm.model import MRM, save_mrm

PUBLISHED_FLAGS = (
    "--embed_pt --meta_json --ckpt --dataset --seen_train_limit --unseen_train_limit --hidden_layers --use_bias "
    "--inner_lr --meta_lr --train_inner_epochs --eval_inner_epochs --tasks_per_batch --epochs --warmup_ratio --val_ratio "
    "--score_threshold --rpo_ratio --rpo_gamma --seed --device --output_path --log_freq --save_freq"
).split()


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    return make_population(tmp_path_factory.mktemp("cli") / "pop", num_users=8, dim=16, train_pairs=12, test_pairs=6)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_parser_accepts_every_published_flag(command):
    options = {option for action in build_parser(command)._actions for option in action.option_strings}
    assert set(PUBLISHED_FLAGS) <= options


def test_preset_then_explicit_flag_wins():
    args = build_parser("train").parse_args(["--preset", "prism", "--meta_lr", "0.01", "--embed_pt", "a", "--meta_json", "b"])
    config = config_from_args(args)
    assert (config.dataset, config.inner_lr, config.meta_lr) == ("PRISM", 1e-3, 0.01)


def test_reddit100_preset_caps_seen_users():
    config = config_from_args(build_parser("train").parse_args(["--preset", "reddit100"]))
    assert (config.seen_train_limit, config.unseen_train_limit) == (100, 50)


def test_published_evaluation_command_writes_results(population, tmp_path, capsys):
    pt, js = population
    torch.manual_seed(0)
    torch.save(MRM(16, [2]).state_dict(), tmp_path / "published.pt")
    code = main([
        "evaluate", "--embed_pt", str(pt), "--meta_json", str(js), "--ckpt", str(tmp_path / "published.pt"),
        "--dataset", "REDDIT", "--seen_train_limit", "150", "--unseen_train_limit", "50", "--hidden_layers", "2",
        "--use_bias", "False", "--inner_lr", "5e-3", "--eval_inner_epochs", "1", "--seed", "42", "--device", "cpu",
        "--output_path", str(tmp_path / "out"),
    ])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert code == 0
    assert all(0.0 <= results[key] <= 1.0 for key in ("seen", "unseen", "overall", "worst10"))
    assert (tmp_path / "out" / "per_user.csv").read_text().splitlines()[0] == "user_id,split,train_pairs,test_pairs,acc_init,acc_adapted"
    assert "worst 10%" in capsys.readouterr().out


def test_evaluate_without_hidden_layers_reads_checkpoint(population, tmp_path):
    pt, js = population
    save_mrm(MRM(16, [4, 3], use_bias=True), tmp_path / "ckpt")
    code = main(["evaluate", "--embed_pt", str(pt), "--meta_json", str(js), "--ckpt", str(tmp_path / "ckpt"), "--output_path", str(tmp_path / "o")])
    assert code == 0


def test_evaluate_rejects_width_mismatch(population, tmp_path, capsys):
    pt, js = population
    save_mrm(MRM(64, [2]), tmp_path / "wide")
    code = main(["evaluate", "--embed_pt", str(pt), "--meta_json", str(js), "--ckpt", str(tmp_path / "wide")])
    assert code == 2
    assert "does not match the checkpoint's in_dim 64" in capsys.readouterr().err


def test_train_command_runs_as_module(population, tmp_path):
    pt, js = population
    completed = subprocess.run(
        [sys.executable, "-m", "mrm", "train", "--preset", "reddit150", "--embed_pt", str(pt), "--meta_json", str(js),
         "--epochs", "2", "--log_freq", "1", "--output_path", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "seen" in completed.stdout
    assert (tmp_path / "run" / "train.log").read_text().count("epoch") >= 2


def test_unknown_command_exits_with_usage(capsys):
    assert main(["fly"]) == 2
    assert "usage: python -m mrm" in capsys.readouterr().err


def test_invalid_setting_is_reported(population, tmp_path, capsys):
    pt, js = population
    assert main(["train", "--embed_pt", str(pt), "--meta_json", str(js), "--val_ratio", "1.5"]) == 2
    assert "--val_ratio 1.5" in capsys.readouterr().err


def test_train_refuses_folder_with_earlier_run(population, tmp_path, capsys):
    pt, js = population
    args = ["train", "--embed_pt", str(pt), "--meta_json", str(js), "--epochs", "1", "--output_path", str(tmp_path / "run")]
    assert main(args) == 0
    assert main(args) == 2
    assert "already contains a training run" in capsys.readouterr().err


def test_train_overwrite_replaces_earlier_run_files(population, tmp_path):
    pt, js = population
    base = ["train", "--embed_pt", str(pt), "--meta_json", str(js), "--output_path", str(tmp_path / "run")]
    assert main([*base, "--epochs", "2", "--save_freq", "1"]) == 0
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert main([*base, "--epochs", "1", "--save_freq", "0", "--overwrite"]) == 0
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["best_epoch"] == 1


def test_evaluate_uses_settings_recorded_with_checkpoint(tmp_path, capsys):
    code = main(["evaluate", "--embed_pt", "assets/demo/demo_prefs.pt", "--meta_json", "assets/demo/demo_prefs.json",
                 "--ckpt", "assets/demo", "--output_path", str(tmp_path / "out")])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    card = json.loads(open("assets/demo/card.json").read())
    assert code == 0
    assert results["protocol"]["inner_lr"] == card["training"]["inner_lr"]
    assert results["overall"] == pytest.approx(card["mrm_adapted"]["overall"], abs=1e-4)


def test_evaluate_names_defaults_for_published_checkpoint(population, tmp_path, capsys):
    pt, js = population
    torch.save(MRM(16, [2]).state_dict(), tmp_path / "published.pt")
    code = main(["evaluate", "--embed_pt", str(pt), "--meta_json", str(js), "--ckpt", str(tmp_path / "published.pt"),
                 "--seed", "7"])
    err = capsys.readouterr().err
    assert code == 0
    assert "using default settings" in err
    assert "'inner_lr': 0.005" in err
    assert "'seed'" not in err.split("using default settings")[1].splitlines()[0]
