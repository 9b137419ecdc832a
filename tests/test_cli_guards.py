"""Guards of `python -m mrm train | evaluate | demo build` against bad input, run through the real command line.

Each case checks the exit code, the one-line message and that files already on
disk survive the rejected command.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
from synthetic import make_population

from mrm import demo_build
from mrm.cli import build_parser, config_from_args, main
from mrm.demo_build import BuildConfig, check_build_config
from mrm.model import MRM, save_mrm

RUN_OUTPUTS = ("results.json", "metrics.jsonl", "per_user.csv", "best/model.safetensors", "checkpoints/epoch_0001/model.safetensors")


def strict_json(text: str):
    """Parse JSON as strict readers do: the bare tokens NaN and Infinity are errors."""

    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    return make_population(tmp_path_factory.mktemp("guards") / "pop", num_users=8, dim=16, train_pairs=12, test_pairs=6)


@pytest.fixture(scope="module")
def trained_run(population, tmp_path_factory):
    """A finished K=4 run with a best checkpoint and one epoch checkpoint."""
    pt, js = population
    run = tmp_path_factory.mktemp("trained") / "run"
    code = main(["train", "--embed_pt", str(pt), "--meta_json", str(js), "--hidden_layers", "4", "--epochs", "1",
                 "--log_freq", "1", "--save_freq", "1", "--device", "cpu", "--output_path", str(run)])
    assert code == 0
    return run


@pytest.fixture
def old_run(trained_run, tmp_path):
    """A copy of the finished run that a test may try to overwrite."""
    return shutil.copytree(trained_run, tmp_path / "old_run")


@pytest.fixture
def bad_meta_json(tmp_path):
    """A metadata file whose row indices lie outside the embedding tensor."""
    path = tmp_path / "oor.json"
    path.write_text(json.dumps({"u1": [{"chosen_idx": 10_000, "rejected_idx": 10_001, "split": "train"}]}))
    return path


def train_args(population, *extra):
    pt, js = population
    return ["train", "--embed_pt", str(pt), "--meta_json", str(js), "--epochs", "1", "--log_freq", "1", "--device", "cpu", *extra]


def evaluate_args(population, ckpt, *extra):
    pt, js = population
    return ["evaluate", "--embed_pt", str(pt), "--meta_json", str(js), "--ckpt", str(ckpt), "--device", "cpu", *extra]


def snapshot(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# ----------------------------------------------------------------------------- --overwrite checks before it removes


def test_overwrite_with_bad_data_keeps_old_run(population, old_run, bad_meta_json, capsys):
    pt, _ = population
    before = snapshot(old_run)
    code = main(["train", "--embed_pt", str(pt), "--meta_json", str(bad_meta_json), "--overwrite", "--output_path", str(old_run)])
    assert code == 2
    assert "invalid entries" in capsys.readouterr().err
    assert snapshot(old_run) == before


def test_overwrite_with_invalid_meta_lr_keeps_old_run(population, old_run, capsys):
    before = snapshot(old_run)
    assert main(train_args(population, "--meta_lr", "-1", "--overwrite", "--output_path", str(old_run))) == 2
    assert "--meta_lr -1.0 must be a finite number above 0" in capsys.readouterr().err
    assert snapshot(old_run) == before


def test_overwrite_with_missing_ckpt_keeps_old_run(population, old_run, tmp_path, capsys):
    before = snapshot(old_run)
    code = main(train_args(population, "--ckpt", str(tmp_path / "absent.pt"), "--overwrite", "--output_path", str(old_run)))
    assert code == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert snapshot(old_run) == before


def test_overwrite_keeps_user_files_in_checkpoint_folders(population, old_run):
    (old_run / "checkpoints" / "mine").mkdir()
    (old_run / "checkpoints" / "mine" / "keep.txt").write_text("mine")
    (old_run / "best" / "notes.txt").write_text("notes")
    assert main(train_args(population, "--save_freq", "0", "--overwrite", "--output_path", str(old_run))) == 0
    assert (old_run / "checkpoints" / "mine" / "keep.txt").read_text() == "mine"
    assert (old_run / "best" / "notes.txt").read_text() == "notes"
    assert not (old_run / "checkpoints" / "epoch_0001").exists()
    assert (old_run / "best" / "model.safetensors").is_file()


def test_overwrite_replaces_earlier_run_files(population, old_run):
    (old_run / "train.log").write_text("log of the earlier run\n")
    assert main(train_args(population, "--save_freq", "0", "--overwrite", "--output_path", str(old_run))) == 0
    assert strict_json((old_run / "config.json").read_text())["hidden_layers"] == [2]
    assert "log of the earlier run" not in (old_run / "train.log").read_text()


# ----------------------------------------------------------------------------- no output folder


def test_train_without_output_path_warns(population, capsys):
    assert main(train_args(population)) == 0
    assert "no --output_path: nothing will be saved" in capsys.readouterr().err


def test_train_help_says_output_path_is_needed(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "without it nothing is saved" in capsys.readouterr().out


# ----------------------------------------------------------------------------- one-line errors


def test_train_with_unknown_hub_repo_offline(population, tmp_path):
    pt, js = population
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    completed = subprocess.run(
        [sys.executable, "-m", "mrm", "train", "--embed_pt", str(pt), "--meta_json", str(js), "--ckpt", "nobody/does-not-exist",
         "--epochs", "1", "--device", "cpu", "--output_path", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert "nobody/does-not-exist" in completed.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_bogus_device_names_flag(population, trained_run, command, capsys):
    args = train_args(population) if command == "train" else evaluate_args(population, trained_run / "best")
    assert main([*args, "--device", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "--device 'bogus' is not a device name; use cpu, cuda, cuda:N or auto" in err
    assert "Expected one of" not in err


def test_bogus_log_level_is_usage_error(population, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(train_args(population, "--log_level", "bogus"))
    assert exit_info.value.code == 2
    assert "--log_level: invalid choice: 'bogus'" in capsys.readouterr().err


def test_train_output_path_file_is_rejected(population, tmp_path, capsys):
    target = tmp_path / "taken.txt"
    target.write_text("mine")
    assert main(train_args(population, "--output_path", str(target))) == 2
    assert "is a file; give the path of a folder" in capsys.readouterr().err
    assert target.read_text() == "mine"


def test_evaluate_output_path_file_rejected_before_work(population, trained_run, tmp_path, capsys):
    target = tmp_path / "taken.txt"
    target.write_text("mine")
    assert main(evaluate_args(population, trained_run / "best", "--output_path", str(target))) == 2
    captured = capsys.readouterr()
    assert "is a file; give the path of a folder" in captured.err
    assert captured.out == ""
    assert target.read_text() == "mine"


# ----------------------------------------------------------------------------- numeric flags


@pytest.mark.parametrize(
    ("flag", "value", "shown"),
    [
        ("--inner_lr", "0", "--inner_lr 0.0 must be a finite number above 0"),
        ("--inner_lr", "-1", "--inner_lr -1.0 must be a finite number above 0"),
        ("--inner_lr", "nan", "--inner_lr nan must be a finite number above 0"),
        ("--inner_lr", "inf", "--inner_lr inf must be a finite number above 0"),
        ("--meta_lr", "0", "--meta_lr 0.0 must be a finite number above 0"),
        ("--grad_clip", "-1", "--grad_clip -1.0 must be a finite number >= 0 (0 turns clipping off)"),
        ("--seen_train_limit", "-2", "--seen_train_limit -2 must be -1 (keep all pairs) or at least 1"),
        ("--epochs", "0", "--epochs 0 must be at least 1"),
        ("--save_freq", "-1", "--save_freq -1 must be zero (no periodic checkpoints) or positive"),
        ("--eval_inner_epochs", "-1", "--eval_inner_epochs -1 must be zero or positive"),
    ],
)
def test_train_rejects_numeric_flag(population, tmp_path, flag, value, shown, capsys):
    assert main(train_args(population, flag, value, "--output_path", str(tmp_path / "run"))) == 2
    err = capsys.readouterr().err
    assert shown in err
    assert err.count(" must ") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flag", "value", "shown"),
    [
        ("--inner_lr", "-1", "--inner_lr -1.0 must be a finite number above 0"),
        ("--inner_lr", "nan", "--inner_lr nan must be a finite number above 0"),
        ("--eval_inner_epochs", "-1", "--eval_inner_epochs -1 must be zero or positive"),
    ],
)
def test_evaluate_rejects_numeric_flag(population, trained_run, flag, value, shown, capsys):
    assert main(evaluate_args(population, trained_run / "best", flag, value)) == 2
    captured = capsys.readouterr()
    assert shown in captured.err
    assert captured.out == ""


def test_grad_clip_zero_trains_without_clipping(population, tmp_path):
    assert main(train_args(population, "--grad_clip", "0", "--output_path", str(tmp_path / "run"))) == 0
    assert strict_json((tmp_path / "run" / "config.json").read_text())["grad_clip"] == 0.0


def test_diverging_loss_fails_the_run(population, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(population, "--epochs", "3", "--inner_lr", "1e300", "--output_path", str(run))) == 1
    progress = strict_json((run / "progress.json").read_text())
    assert progress["status"] == "failed"
    assert "at epoch 1" in progress["message"]
    assert "lower --inner_lr" in capsys.readouterr().err
    assert not (run / "results.json").exists()


def test_train_with_no_unseen_users_writes_null(population, tmp_path):
    run = tmp_path / "run"
    assert main(train_args(population, "--unseen_train_limit", "0", "--output_path", str(run))) == 0
    rows = [strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    results = strict_json((run / "results.json").read_text())
    assert rows[0]["unseen"] is None
    assert results["unseen"] is None


# ----------------------------------------------------------------------------- failed runs leave a reusable folder


def test_data_error_creates_no_run_folder(population, bad_meta_json, tmp_path):
    pt, _ = population
    code = main(["train", "--embed_pt", str(pt), "--meta_json", str(bad_meta_json), "--output_path", str(tmp_path / "run")])
    assert code == 2
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_leftovers_of_failed_run_are_reused(population, tmp_path, status):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "progress.json").write_text(json.dumps({"status": status, "epoch": 0, "epochs": 1, "message": "DataError"}))
    (run / "train.log").write_text("old log\n")
    (run / "notes.txt").write_text("mine")
    assert main(train_args(population, "--output_path", str(run))) == 0
    assert strict_json((run / "progress.json").read_text())["status"] == "done"
    assert "old log" not in (run / "train.log").read_text()
    assert (run / "notes.txt").read_text() == "mine"


def test_failed_run_with_metrics_still_needs_overwrite(population, old_run, capsys):
    (old_run / "progress.json").write_text(json.dumps({"status": "failed", "epoch": 1, "epochs": 2}))
    assert main(train_args(population, "--output_path", str(old_run))) == 2
    assert "already contains a training run" in capsys.readouterr().err


# ----------------------------------------------------------------------------- silent overwrites


def test_evaluate_keeps_training_results(population, old_run, capsys):
    before = (old_run / "results.json").read_text()
    assert main(evaluate_args(population, old_run / "best", "--output_path", str(old_run))) == 2
    captured = capsys.readouterr()
    assert "already contains results.json and per_user.csv" in captured.err
    assert "--overwrite" in captured.err
    assert (old_run / "results.json").read_text() == before


def test_evaluate_overwrite_replaces_results(population, old_run):
    assert main(evaluate_args(population, old_run / "best", "--output_path", str(old_run), "--overwrite")) == 0
    assert "selected_on" not in strict_json((old_run / "results.json").read_text())


def test_demo_build_rejects_training_run_folder(old_run, capsys):
    before = snapshot(old_run)
    assert demo_build.main(["build", "--out", str(old_run)]) != 0
    assert "contains a training run (progress.json)" in capsys.readouterr().err
    assert snapshot(old_run) == before


def test_demo_build_default_output_passes_checks():
    check_build_config(BuildConfig())


def test_demo_build_overwrite_flag_parses(old_run):
    config = demo_build.parse_build_config(["--out", str(old_run), "--overwrite"])
    check_build_config(config)
    assert config.overwrite is True


def test_demo_build_invalid_epochs_fails_before_output(tmp_path, capsys):
    assert demo_build.main(["build", "--epochs", "0", "--out", str(tmp_path / "bundle")]) != 0
    assert "--epochs 0 must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()


# ----------------------------------------------------------------------------- checkpoint architecture


def test_explicit_hidden_layers_conflicting_with_ckpt(population, trained_run, tmp_path, capsys):
    code = main(train_args(population, "--hidden_layers", "2", "--ckpt", str(trained_run / "best"), "--output_path", str(tmp_path / "run")))
    assert code == 2
    err = capsys.readouterr().err
    assert "--hidden_layers 2 conflicts with the checkpoint" in err
    assert "hidden_layers=[4]" in err
    assert not (tmp_path / "run").exists()


def test_ckpt_architecture_is_recorded(population, trained_run, tmp_path):
    run = tmp_path / "run"
    assert main(train_args(population, "--preset", "reddit150", "--ckpt", str(trained_run / "best"), "--output_path", str(run))) == 0
    assert strict_json((run / "config.json").read_text())["hidden_layers"] == [4]
    assert strict_json((run / "best" / "config.json").read_text())["training"]["hidden_layers"] == [4]


# ----------------------------------------------------------------------------- evaluate without unseen users


def test_evaluate_without_unseen_users_prints_na(population, trained_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(evaluate_args(population, trained_run / "best", "--unseen_train_limit", "0", "--output_path", str(out))) == 0
    captured = capsys.readouterr()
    results = strict_json((out / "results.json").read_text())
    assert "n/a" in captured.out.splitlines()[3]
    assert "no unseen users are evaluated because --unseen_train_limit 0" in captured.err
    assert results["unseen"] is None
    assert results["init"]["unseen"] is None


# ----------------------------------------------------------------------------- help and parse-time choices


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_help_lists_defaults_and_presets(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert "--inner_lr INNER_LR Adam learning rate" in out
    assert "(default: 0.005)" in out
    assert "reddit150: dataset=REDDIT, seen_train_limit=150" in out


def test_evaluate_help_has_own_wording(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert "checkpoint to evaluate" in out
    assert "start from this checkpoint" not in out
    assert "folder to write results.json and per_user.csv into" in out
    assert "and initialisation" not in out


@pytest.mark.parametrize("flag", ["--select_on", "--dataset"])
def test_choice_flags_reject_unknown_values(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser("train").parse_args([flag, "bogus"])
    assert exit_info.value.code == 2
    assert f"{flag}: invalid choice: 'bogus'" in capsys.readouterr().err


def test_dataset_choice_ignores_case():
    assert build_parser("train").parse_args(["--dataset", "prism"]).dataset == "PRISM"


def test_explicit_preset_wins_over_checkpoint_settings():
    args = build_parser("evaluate").parse_args(["--preset", "prism", "--seed", "7"])
    config = config_from_args(args, {"inner_lr": 0.5, "eval_inner_epochs": 20, "seed": 3})
    assert (config.inner_lr, config.eval_inner_epochs, config.seed) == (1e-3, 1, 7)


def test_checkpoint_settings_fill_unset_flags():
    config = config_from_args(build_parser("evaluate").parse_args([]), {"inner_lr": 0.5, "seed": 3})
    assert (config.inner_lr, config.seed) == (0.5, 3)


# ----------------------------------------------------------------------------- messages


def test_evaluate_run_folder_points_to_best(population, trained_run, capsys):
    assert main(evaluate_args(population, trained_run)) == 2
    assert f"pass the checkpoint it selected: --ckpt {trained_run / 'best'}" in capsys.readouterr().err


def test_evaluate_without_embed_pt_names_flags(trained_run, capsys):
    assert main(["evaluate", "--ckpt", str(trained_run / "best")]) == 2
    assert "--embed_pt and --meta_json are required" in capsys.readouterr().err


def test_train_width_mismatch_gives_fix(population, tmp_path, capsys):
    save_mrm(MRM(64, [2]), tmp_path / "wide")
    assert main(train_args(population, "--ckpt", str(tmp_path / "wide"))) == 2
    assert "embed the data with the reward model the checkpoint was trained on" in capsys.readouterr().err
