"""JobManager: starting, watching, cancelling and re-reading training runs.

Most tests drive a stand-in trainer (a small script written into the test's
temporary folder) that writes the run-folder files the real trainer writes,
so they test the manager alone. One test runs the real `python -m mrm train`
on a tiny synthetic embedding file.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mrm.data import write_embedding_files
from mrm.jobs import (
    JobBusyError,
    JobInputError,
    JobManager,
    RunNotFoundError,
    check_embedding_files,
    metrics_long_frame,
    read_log_tail,
    train_args,
)

STAND_IN_TRAINER = textwrap.dedent(
    """
    import argparse, json, os, subprocess, sys, time
    from pathlib import Path

    parser = argparse.ArgumentParser()
    parser.add_argument("--embed_pt")
    parser.add_argument("--meta_json")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--epoch_s", type=float, default=0.05)
    parser.add_argument("--exit_code", type=int, default=0)
    parser.add_argument("--spawn_child", action="store_true")
    parser.add_argument("--output_path", required=True)
    args, _ = parser.parse_known_args()
    run = Path(args.output_path)

    def write(name, obj):
        tmp = run / (name + ".tmp")
        tmp.write_text(json.dumps(obj))
        os.replace(tmp, run / name)

    if args.spawn_child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        (run / "child.pid").write_text(str(child.pid))

    write("config.json", {"dataset": "REDDIT", "seen_train_limit": 100, "epochs": args.epochs})
    for epoch in range(1, args.epochs + 1):
        write("progress.json", {"status": "running", "epoch": epoch, "epochs": args.epochs, "message": ""})
        with open(run / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"epoch": epoch, "train_loss": 0.7, "seen": 0.5 + epoch / 100,
                                     "unseen": 0.5, "overall": 0.5, "worst10": 0.3}) + "\\n")
        print(f"epoch {epoch}/{args.epochs}", flush=True)
        time.sleep(args.epoch_s)

    if args.exit_code:
        print("Traceback: something broke", flush=True)
        sys.exit(args.exit_code)
    (run / "best").mkdir()
    (run / "best" / "config.json").write_text("{}")
    (run / "per_user.csv").write_text("user_id,split,train_pairs,test_pairs,acc_init,acc_adapted\\nu0,seen,3,2,0.5,1.0\\n")
    write("results.json", {"seen": 0.61, "unseen": 0.6, "overall": 0.605, "worst10": 0.4,
                           "init": {"seen": 0.5, "unseen": 0.5, "overall": 0.5, "worst10": 0.3}})
    write("progress.json", {"status": "done", "epoch": args.epochs, "epochs": args.epochs, "message": "finished"})
    """
)


@pytest.fixture
def data_files(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    embeddings = torch.randn(8, 4)
    users = {
        f"u{u}": [
            {"chosen_idx": 2 * p, "rejected_idx": 2 * p + 1, "split": split}
            for p, split in enumerate(["train", "train", "train", "val"])
        ]
        for u in range(2)
    }
    return write_embedding_files(tmp_path / "data" / "prefs", embeddings, users)


@pytest.fixture
def manager(tmp_path: Path) -> JobManager:
    script = tmp_path / "stand_in_trainer.py"
    script.write_text(STAND_IN_TRAINER)
    return JobManager(tmp_path / "runs", command=[sys.executable, str(script)], cancel_grace_s=2.0)


def data_args(data_files, *extra: str) -> list[str]:
    embed_pt, meta_json = data_files
    return ["--embed_pt", str(embed_pt), "--meta_json", str(meta_json), *extra]


def wait_until_finished(manager: JobManager, run_id: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = manager.status(run_id)
        if status.finished:
            return status
        time.sleep(0.05)
    raise TimeoutError(f"run {run_id} still running after {timeout_s} s")


def pid_alive(pid: int) -> bool:
    """Return whether `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_start_creates_run_folder_with_log(manager, data_files):
    handle = manager.start(data_args(data_files))
    status = wait_until_finished(manager, handle.run_id)

    assert handle.run_dir.parent == manager.runs_dir
    assert (handle.run_dir / "job.json").is_file()
    assert "epoch 2/2" in status.log_tail


def test_start_passes_output_path_last(manager, data_files):
    handle = manager.start(data_args(data_files))
    wait_until_finished(manager, handle.run_id)

    assert handle.command[-2:] == ["--output_path", str(handle.run_dir)]


def test_status_running_then_done_with_results(manager, data_files):
    handle = manager.start(data_args(data_files, "--epochs", "3", "--epoch_s", "0.3"))
    first = manager.status()
    final = wait_until_finished(manager, handle.run_id)

    assert first.state == "running"
    assert final.state == "done"
    assert final.epoch == 3
    assert final.epochs == 3
    assert [row["epoch"] for row in final.metrics] == [1, 2, 3]
    assert final.results["seen"] == pytest.approx(0.61)
    assert final.best_dir == handle.run_dir / "best"


def test_second_start_rejected_while_running(manager, data_files):
    handle = manager.start(data_args(data_files, "--epochs", "50", "--epoch_s", "0.1"))
    try:
        with pytest.raises(JobBusyError, match=f"already running \\(run {handle.run_id}\\)"):
            manager.start(data_args(data_files))
        assert manager.list_runs() == [handle.run_id]
    finally:
        manager.cancel()


def test_start_allowed_again_after_job_ends(manager, data_files):
    first = manager.start(data_args(data_files))
    wait_until_finished(manager, first.run_id)
    second = manager.start(data_args(data_files))
    wait_until_finished(manager, second.run_id)

    assert manager.list_runs() == [second.run_id, first.run_id]


def test_failed_trainer_reported_as_failed(manager, data_files):
    handle = manager.start(data_args(data_files, "--exit_code", "3"))
    status = wait_until_finished(manager, handle.run_id)

    assert status.state == "failed"
    assert "exit code 3" in status.message
    assert "something broke" in status.log_tail
    assert status.results is None


def test_cancel_kills_process_group(manager, data_files):
    handle = manager.start(data_args(data_files, "--epochs", "100", "--epoch_s", "0.1", "--spawn_child"))
    child_pid_file = handle.run_dir / "child.pid"
    deadline = time.monotonic() + 10
    # The trainer may have created the file but not yet written the pid into it.
    while not (child_pid_file.is_file() and child_pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child_pid = int(child_pid_file.read_text())

    status = manager.cancel()

    assert status.state == "cancelled"
    assert not pid_alive(handle.pid)
    assert not pid_alive(child_pid)


def test_cancel_writes_progress_cancelled(manager, data_files):
    handle = manager.start(data_args(data_files, "--epochs", "100", "--epoch_s", "0.1"))
    time.sleep(0.5)
    manager.cancel()

    progress = json.loads((handle.run_dir / "progress.json").read_text())
    assert progress["status"] == "cancelled"
    assert manager.active_run_id() is None


def test_cancel_without_job_returns_none(manager):
    assert manager.cancel() is None


def test_cancel_sends_sigkill_after_grace(tmp_path, data_files):
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(120)\n"
    )
    manager = JobManager(tmp_path / "runs", command=[sys.executable, str(script)], cancel_grace_s=0.5)
    handle = manager.start(data_args(data_files))
    deadline = time.monotonic() + 10
    while "ready" not in read_log_tail(handle.run_dir / "console.log") and time.monotonic() < deadline:
        time.sleep(0.05)

    status = manager.cancel()

    assert status.state == "cancelled"
    assert not pid_alive(handle.pid)


def test_new_manager_lists_old_run_with_results(manager, data_files):
    handle = manager.start(data_args(data_files))
    wait_until_finished(manager, handle.run_id)

    reopened = JobManager(manager.runs_dir)
    status = reopened.status()

    assert reopened.list_runs() == [handle.run_id]
    assert status.run_id == handle.run_id
    assert status.state == "done"
    assert status.results["overall"] == pytest.approx(0.605)


def test_run_without_process_is_interrupted(tmp_path):
    run_dir = tmp_path / "runs" / "20240101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "job.json").write_text(json.dumps({"run_id": run_dir.name, "pid": 2**22 + 1, "finished_at": None}))
    (run_dir / "progress.json").write_text(json.dumps({"status": "running", "epoch": 4, "epochs": 10}))

    status = JobManager(tmp_path / "runs").status()

    assert status.state == "interrupted"
    assert status.epoch == 4


def test_new_manager_adopts_running_trainer(manager, data_files):
    handle = manager.start(data_args(data_files, "--epochs", "100", "--epoch_s", "0.1"))
    try:
        reopened = JobManager(manager.runs_dir, cancel_grace_s=2.0)
        assert reopened.active_run_id() == handle.run_id
        with pytest.raises(JobBusyError):
            reopened.start(data_args(data_files))
        assert reopened.cancel().state == "cancelled"
    finally:
        manager.cancel()


def test_bad_data_file_rejected_before_spawn(manager, tmp_path, data_files):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torch file")

    with pytest.raises(JobInputError, match="broken.pt"):
        manager.start(["--embed_pt", str(broken), "--meta_json", str(data_files[1])])
    assert manager.list_runs() == []


def test_missing_data_file_rejected(manager, tmp_path, data_files):
    with pytest.raises(JobInputError, match="not found"):
        manager.start(["--embed_pt", str(tmp_path / "nope.pt"), "--meta_json", str(data_files[1])])


def test_missing_flag_rejected(manager, data_files):
    with pytest.raises(JobInputError, match="--meta_json"):
        manager.start(["--embed_pt", str(data_files[0])])


def test_output_path_in_args_rejected(manager, data_files):
    with pytest.raises(JobInputError, match="output_path"):
        manager.start(data_args(data_files, "--output_path", "elsewhere"))


def test_metadata_out_of_range_rejected(tmp_path):
    embed_pt, meta_json = write_embedding_files(
        tmp_path / "bad", torch.zeros(2, 3), {"u": [{"chosen_idx": 0, "rejected_idx": 1, "split": "train"}]}
    )
    meta_json.write_text(json.dumps({"u": [{"chosen_idx": 0, "rejected_idx": 5, "split": "train"}]}))
    with pytest.raises(JobInputError, match="out of range"):
        check_embedding_files(embed_pt, meta_json)


def test_status_unknown_run_raises(manager):
    with pytest.raises(RunNotFoundError):
        manager.status("20990101-000000")


def test_status_rejects_path_in_run_id(manager):
    with pytest.raises(RunNotFoundError, match="invalid run id"):
        manager.status("../etc")


def test_status_without_runs_is_none(manager):
    assert manager.status() is None


def test_train_args_from_mapping():
    argv = train_args({"embed_pt": "x.pt", "epochs": 3, "use_bias": True, "rpo": False, "hidden_layers": [4, 2], "ckpt": None})

    assert argv == ["--embed_pt", "x.pt", "--epochs", "3", "--use_bias", "--hidden_layers", "4", "2"]


def test_log_tail_keeps_last_progress_bar_state(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("start\n" + "".join(f"\r{i}%" for i in range(0, 101, 10)) + "\nend\n")

    assert read_log_tail(log) == "start\n100%\nend"


def test_log_tail_limits_lines(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))

    assert read_log_tail(log, lines=3).splitlines() == ["line 97", "line 98", "line 99"]


def test_metrics_long_frame_one_row_per_split():
    frame = metrics_long_frame([{"epoch": 1, "seen": 0.6, "unseen": 0.55, "overall": 0.58}, {"epoch": 2, "seen": 0.7}])

    assert len(frame) == 4
    assert set(frame["split"]) == {"seen", "unseen", "overall"}


def test_real_trainer_runs_to_done(tmp_path):
    """The real `python -m mrm train` on a tiny population, through the manager."""
    pytest.importorskip("mrm.cli", reason="`python -m mrm train` is not in this checkout")

    # Eight users with a preference along one embedding direction.
    torch.manual_seed(0)
    rows, users = [], {}
    for u in range(8):
        entries = []
        for p in range(10):
            chosen, rejected = torch.randn(16), torch.randn(16)
            chosen[0], rejected[0] = 1.0, -1.0
            rows += [chosen, rejected]
            index = len(rows) - 2
            entries.append({"chosen_idx": index, "rejected_idx": index + 1, "split": "train" if p < 6 else "val"})
        users[f"user{u}"] = entries
    embed_pt, meta_json = write_embedding_files(tmp_path / "tiny", torch.stack(rows), users)

    manager = JobManager(tmp_path / "runs")
    handle = manager.start(
        {
            "embed_pt": embed_pt,
            "meta_json": meta_json,
            "epochs": 2,
            "seen_train_limit": -1,
            "unseen_train_limit": -1,
            "device": "cpu",
        }
    )
    status = wait_until_finished(manager, handle.run_id, timeout_s=60)

    assert status.state == "done", status.log_tail
    assert status.results is not None
    assert (handle.run_dir / "best" / "model.safetensors").is_file()


def test_metrics_long_frame_empty_has_numeric_columns():
    frame = metrics_long_frame([])

    assert frame["epoch"].dtype == "float64"
    assert frame["accuracy"].dtype == "float64"


def test_status_epoch_after_cancel_from_metrics(tmp_path):
    run_dir = tmp_path / "runs" / "20240101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "progress.json").write_text(json.dumps({"status": "cancelled", "epoch": -1, "epochs": 10}))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 6, "seen": 0.6}) + "\n")

    status = JobManager(tmp_path / "runs").status()

    assert status.state == "cancelled"
    assert status.epoch == 6
