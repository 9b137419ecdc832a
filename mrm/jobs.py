"""Meta-training jobs run as subprocesses, one at a time, each in its own run folder.

`JobManager` starts `python -m mrm train ... --output_path RUN` in a new
process group with its output going to `RUN/console.log`, and reads the run
folder back as a `RunStatus`. It needs no gradio, so the app, a script or a
test can drive it alike. The trainer writes the other files of a run folder:

    RUN/job.json        written here: command, pid, start and end times, return code
    RUN/console.log     written here: the trainer's stdout and stderr
    RUN/train.log       the trainer's own log file
    RUN/config.json     the training configuration
    RUN/progress.json   {"status": "running|done|failed|cancelled", "epoch", "epochs", "message"}
    RUN/metrics.jsonl   one JSON row per evaluation: epoch, train_loss, seen, unseen, overall, worst10
    RUN/results.json    the final benchmark numbers
    RUN/per_user.csv    per-user accuracy before and after adaptation
    RUN/best/           the selected checkpoint (model.safetensors + config.json)

A run folder stays readable after the server restarts: a new manager on the
same runs folder lists it, and a run whose progress file has status "running" but
whose process is gone is reported as "interrupted".
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mrm.fileio import write_json_atomic

logger = logging.getLogger(__name__)

RUNS_DIR_ENV = "MRM_RUNS_DIR"
DEFAULT_RUNS_DIR = "runs"
JOB_FILE = "job.json"
LOG_FILE = "train.log"
# The trainer logs to stderr and to train.log alike. Its captured output goes
# to a file of its own, because otherwise every log line would appear twice.
CONSOLE_FILE = "console.log"
PROGRESS_FILE = "progress.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
PER_USER_FILE = "per_user.csv"
CONFIG_FILE = "config.json"
BEST_DIR = "best"

STATES = ("running", "done", "failed", "cancelled", "interrupted")
FINISHED_STATES = ("done", "failed", "cancelled")
METRIC_SPLITS = ("seen", "unseen", "overall")

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class JobBusyError(RuntimeError):
    """A training job is already running; this server runs one at a time."""


class JobInputError(ValueError):
    """The arguments of a training job are invalid; nothing was started."""


class RunNotFoundError(LookupError):
    """No run folder with the requested run id."""


@dataclass(frozen=True)
class RunHandle:
    """A started training job."""

    run_id: str
    run_dir: Path
    pid: int
    command: list[str]


@dataclass
class RunStatus:
    """Snapshot of a run folder at one moment.

    `state` is one of running, done, failed, cancelled or interrupted (the
    progress file has status running but the process is gone, for example
    after a server restart). `epoch` is the last epoch the trainer reported.
    The trainer reports no epoch when it stops on an error or a cancel, so then
    it is the last evaluated epoch, or None before the first evaluation.
    `metrics` contains the rows of metrics.jsonl as dicts, `results` the
    content of results.json once the run has finished.
    """

    run_id: str
    run_dir: Path
    state: str
    epoch: int | None = 0
    epochs: int | None = None
    message: str = ""
    log_tail: str = ""
    metrics: list[dict] = field(default_factory=list)
    results: dict | None = None
    config: dict | None = None
    job: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def best_dir(self) -> Path | None:
        """Folder of the selected checkpoint, or None when the trainer has not written it yet."""
        path = self.run_dir / BEST_DIR
        return path if path.is_dir() else None

    @property
    def per_user_csv(self) -> Path | None:
        path = self.run_dir / PER_USER_FILE
        return path if path.is_file() else None


def default_runs_dir() -> Path:
    """Return the runs folder: $MRM_RUNS_DIR when set, else ./runs."""
    return Path(os.environ.get(RUNS_DIR_ENV) or DEFAULT_RUNS_DIR)


def trainer_command() -> list[str]:
    """Return the command that runs the trainer, without its arguments."""
    return [sys.executable, "-m", "mrm", "train"]


# ---------------------------------------------------------------------------
# Reading a run folder


def _read_json(path: Path) -> Any:
    """Return the parsed JSON file, or None when it is missing or (still) unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning("Could not read %s: %s", path, error)
        return None


def read_metrics(path: Path) -> list[dict]:
    """Return the rows of a metrics.jsonl file; a partly written last line is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []

    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_log_tail(path: Path, lines: int = 40, max_bytes: int = 64_000) -> str:
    """Return the last `lines` lines of a log file as a terminal would show them.

    Progress bars rewrite their line with carriage returns, so only the text
    after the last carriage return of each line is kept.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return ""

    text = data.decode("utf-8", errors="replace")
    shown = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    if size > max_bytes:
        shown = shown[1:]  # the first line is probably cut
    while shown and not shown[-1].strip():
        shown.pop()
    return "\n".join(shown[-lines:])


def metrics_long_frame(metrics: Sequence[Mapping]) -> pd.DataFrame:
    """Return accuracy curves as a long table: epoch, split (seen/unseen/overall), accuracy.

    Rows without an epoch and splits without a number are left out, so a plot
    of the result has one line per split that the trainer reported.
    """
    records = []
    for row in metrics:
        epoch = row.get("epoch")
        if not isinstance(epoch, (int, float)):
            continue
        for split in METRIC_SPLITS:
            value = row.get(split)
            if isinstance(value, (int, float)):
                records.append({"epoch": float(epoch), "split": split, "accuracy": float(value)})
    # Typed columns even when empty, so that a plot takes epoch and accuracy as numbers.
    frame = pd.DataFrame(records, columns=["epoch", "split", "accuracy"])
    return frame.astype({"epoch": "float64", "split": "str", "accuracy": "float64"})


# ---------------------------------------------------------------------------
# Processes


def _pid_alive(pid: int, run_dir: Path | None = None) -> bool:
    """Return whether process `pid` exists, is not a zombie, and (on Linux) belongs to `run_dir`.

    Checking the command line against the run folder keeps a recycled pid from
    passing for a trainer started before a server restart.
    """
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return False
        return run_dir is None or str(run_dir) in cmdline

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(pgid: int) -> bool:
    """Return whether any process of group `pgid` is alive (zombies count as gone)."""
    if not Path("/proc/self").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True

    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp.
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; return False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


class _Job:
    """The process of the running job: a child of this server, or one adopted from a run folder."""

    def __init__(self, run_id: str, run_dir: Path, pid: int, popen: subprocess.Popen | None):
        self.run_id = run_id
        self.run_dir = run_dir
        self.pid = pid
        self.pgid = pid  # start_new_session makes the trainer its group's leader
        self.popen = popen
        self.cancel_requested = False
        self.finished = threading.Event()

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _pid_alive(self.pid, self.run_dir)

    def wait(self, timeout: float | None) -> bool:
        """Wait for the trainer to exit; return whether it has exited."""
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.alive():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True


# ---------------------------------------------------------------------------
# The manager


class JobManager:
    """Start, watch and cancel meta-training runs under one runs folder, one job at a time.

    Args:
        runs_dir: folder that contains one sub-folder per run.
        command: the trainer command without arguments; `python -m mrm train` by default.
            The run's arguments and `--output_path RUN` are appended.
        cancel_grace_s: seconds between SIGTERM and SIGKILL when cancelling.
        validate: whether `start` checks the embedding files before spawning.

    All public methods are safe to call from several threads.
    """

    def __init__(
        self,
        runs_dir: str | os.PathLike | None = None,
        command: Sequence[str] | None = None,
        cancel_grace_s: float = 5.0,
        validate: bool = True,
    ):
        self.runs_dir = Path(runs_dir if runs_dir is not None else default_runs_dir()).resolve()
        self.command = list(command) if command is not None else trainer_command()
        self.cancel_grace_s = cancel_grace_s
        self.validate = validate
        self._lock = threading.RLock()
        self._job: _Job | None = None
        self._adopt_running_job()

    # -- starting -------------------------------------------------------

    def start(self, args: Sequence[str] | Mapping[str, Any], metadata: Mapping | None = None) -> RunHandle:
        """Start a training job and return at once.

        Args:
            args: trainer arguments, either as a list (`["--embed_pt", "x.pt", ...]`)
                or as a mapping from flag name to value (see `train_args`). They must
                name `--embed_pt` and `--meta_json`; `--output_path` is set here.
            metadata: extra fields stored in RUN/job.json (for example the data source).

        Raises:
            JobBusyError: a job is running; nothing was started.
            JobInputError: the arguments or the data files are invalid; nothing was started.
        """
        argv = train_args(args) if isinstance(args, Mapping) else [str(arg) for arg in args]

        with self._lock:
            running = self.active_run_id()
            if running is not None:
                raise JobBusyError(f"a training job is already running (run {running}); cancel it or wait for it to end")

            if any(arg == "--output_path" or arg.startswith("--output_path=") for arg in argv):
                raise JobInputError("remove --output_path from the arguments: the job manager sets it to the run folder")
            if self.validate:
                embed_pt = _flag_value(argv, "--embed_pt")
                meta_json = _flag_value(argv, "--meta_json")
                check_embedding_files(embed_pt, meta_json)

            run_id, run_dir = self._new_run_dir()
            command = [*self.command, *argv, "--output_path", str(run_dir)]
            job_info = {
                "run_id": run_id,
                "command": command,
                "started_at": _now(),
                "pid": None,
                "finished_at": None,
                "returncode": None,
                "cancel_requested": False,
                **dict(metadata or {}),
            }

            # The trainer gets its own process group so that cancelling reaches
            # any process it starts, and unbuffered output so the log is live.
            env = dict(os.environ)
            env["PYTHONUNBUFFERED"] = "1"
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
            with open(run_dir / CONSOLE_FILE, "ab") as log:
                try:
                    popen = subprocess.Popen(
                        command,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                        env=env,
                    )
                except OSError as error:
                    job_info.update(finished_at=_now(), error=str(error))
                    write_json_atomic(run_dir / JOB_FILE, job_info)
                    self._write_progress(run_dir, "failed", f"could not start the trainer: {error}")
                    raise JobInputError(f"failed to start the trainer command {command[0]!r}: {error}") from error

            job_info["pid"] = popen.pid
            write_json_atomic(run_dir / JOB_FILE, job_info)
            job = _Job(run_id, run_dir, popen.pid, popen)
            self._job = job
            threading.Thread(target=self._watch, args=(job,), name=f"mrm-job-{run_id}", daemon=True).start()

        logger.info("Started training run %s (pid %d): %s", run_id, popen.pid, " ".join(command))
        return RunHandle(run_id, run_dir, popen.pid, command)

    def _new_run_dir(self) -> tuple[str, Path]:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        for suffix in range(1000):
            run_id = stamp if suffix == 0 else f"{stamp}-{suffix}"
            run_dir = self.runs_dir / run_id
            try:
                run_dir.mkdir()
            except FileExistsError:
                continue
            return run_id, run_dir
        raise RuntimeError(f"could not create a new run folder under {self.runs_dir}")

    # -- finishing ------------------------------------------------------

    def _watch(self, job: _Job) -> None:
        """Wait for the trainer to exit, then record how it ended."""
        job.wait(None)
        self._finalize(job)

    def _finalize(self, job: _Job) -> None:
        with self._lock:
            if job.finished.is_set():
                return
            returncode = job.popen.returncode if job.popen is not None else None

            # Record the end in job.json. A cancel may also come from another
            # manager that adopted this trainer.
            info = _read_json(job.run_dir / JOB_FILE) or {"run_id": job.run_id}
            cancelled = job.cancel_requested or bool(info.get("cancel_requested"))
            info.update(finished_at=_now(), returncode=returncode, cancel_requested=cancelled)
            write_json_atomic(job.run_dir / JOB_FILE, info)

            # Record in progress.json how the run ended when the trainer could not.
            progress = _read_json(job.run_dir / PROGRESS_FILE) or {}
            status = progress.get("status")
            if cancelled and status != "done":
                if status != "cancelled":
                    self._write_progress(job.run_dir, "cancelled", "cancelled by the user", progress)
            elif status not in FINISHED_STATES:
                if returncode == 0 and (job.run_dir / RESULTS_FILE).is_file():
                    self._write_progress(job.run_dir, "done", "finished", progress)
                else:
                    reason = f"exit code {returncode}" if returncode is not None else "the process ended"
                    self._write_progress(job.run_dir, "failed", f"the trainer stopped ({reason}); see console.log", progress)

            if self._job is job:
                self._job = None
            job.finished.set()
        logger.info("Training run %s ended (return code %s)", job.run_id, returncode)

    @staticmethod
    def _write_progress(run_dir: Path, status: str, message: str, previous: Mapping | None = None) -> None:
        progress = dict(previous or {})
        progress.update(status=status, message=message)
        progress.setdefault("epoch", 0)
        progress.setdefault("epochs", None)
        write_json_atomic(run_dir / PROGRESS_FILE, progress)

    # -- cancelling -----------------------------------------------------

    def cancel(self, timeout: float | None = None) -> RunStatus | None:
        """Cancel the running job: SIGTERM to its process group, SIGKILL after the grace period.

        Blocks until the trainer and the processes it started have exited (at
        most the grace period plus twice `timeout`, default 5 s) and returns the run's status, which is then
        "cancelled" unless the trainer finished first. Returns None when no job runs.
        """
        with self._lock:
            job = self._job
            if job is None or job.finished.is_set():
                return None
            job.cancel_requested = True
            info = _read_json(job.run_dir / JOB_FILE) or {}
            info["cancel_requested"] = True
            write_json_atomic(job.run_dir / JOB_FILE, info)

        logger.info("Cancelling training run %s (process group %d)", job.run_id, job.pgid)
        _signal_group(job.pgid, signal.SIGTERM)
        if not job.wait(self.cancel_grace_s):
            logger.warning("Run %s ignored SIGTERM for %.1f s; sending SIGKILL", job.run_id, self.cancel_grace_s)

        # Kill whatever is left of the group, including processes the trainer
        # started and that outlived it, and wait until they are gone.
        timeout = 5.0 if timeout is None else timeout
        if _group_alive(job.pgid):
            _signal_group(job.pgid, signal.SIGKILL)
        job.wait(timeout)
        deadline = time.monotonic() + timeout
        while _group_alive(job.pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if job.popen is None:
            self._finalize(job)  # an adopted process has no watcher thread
        job.finished.wait(timeout)
        return self.status(job.run_id)

    # -- reading --------------------------------------------------------

    def active_run_id(self) -> str | None:
        """Return the id of the running job, or None."""
        with self._lock:
            job = self._job
            if job is None:
                return None
            if job.alive():
                return job.run_id
            if job.popen is None:
                self._finalize(job)  # an adopted process has no watcher thread
            return None

    def list_runs(self) -> list[str]:
        """Return the ids of the run folders under the runs folder, newest first."""
        if not self.runs_dir.is_dir():
            return []
        runs = []
        for path in self.runs_dir.iterdir():
            if not path.is_dir() or not _RUN_ID.match(path.name):
                continue
            if not ((path / JOB_FILE).is_file() or (path / PROGRESS_FILE).is_file()):
                continue
            info = _read_json(path / JOB_FILE) or {}
            started = info.get("started_at") or dt.datetime.fromtimestamp(path.stat().st_mtime).isoformat()
            runs.append((str(started), path.name))
        return [run_id for _, run_id in sorted(runs, reverse=True)]

    def run_dir(self, run_id: str) -> Path:
        """Return the folder of run `run_id`; raise RunNotFoundError when there is none."""
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise RunNotFoundError(f"invalid run id {run_id!r}: expected a folder name such as 20250101-120000")
        path = self.runs_dir / run_id
        if not path.is_dir():
            raise RunNotFoundError(f"run {run_id!r} not found under {self.runs_dir}")
        return path

    def status(self, run_id: str | None = None) -> RunStatus | None:
        """Return the status of run `run_id`; by default the running job, else the newest run.

        Returns None when `run_id` is None and there are no runs at all.

        Raises:
            RunNotFoundError: `run_id` names no run folder.
        """
        if run_id is None:
            run_id = self.active_run_id()
        self._wait_for_finalize(run_id)
        if run_id is None:
            runs = self.list_runs()
            if not runs:
                return None
            run_id = runs[0]
        run_dir = self.run_dir(run_id)

        progress = _read_json(run_dir / PROGRESS_FILE) or {}
        job_info = _read_json(run_dir / JOB_FILE) or {}
        state = self._state(run_id, run_dir, progress, job_info)
        results = _read_json(run_dir / RESULTS_FILE)
        config = _read_json(run_dir / CONFIG_FILE)

        metrics = read_metrics(run_dir / METRICS_FILE)
        epoch = _epoch(progress.get("epoch"))
        if epoch is None and metrics:
            epoch = _epoch(metrics[-1].get("epoch"))

        message = str(progress.get("message") or "")
        if state == "interrupted":
            message = "the trainer process is gone although the run never finished (for example after a server restart)"
        return RunStatus(
            run_id=run_id,
            run_dir=run_dir,
            state=state,
            epoch=epoch,
            epochs=_int_or_none(progress.get("epochs")),
            message=message,
            log_tail=read_log_tail(run_dir / CONSOLE_FILE if (run_dir / CONSOLE_FILE).is_file() else run_dir / LOG_FILE),
            metrics=metrics,
            results=results if isinstance(results, dict) else None,
            config=config if isinstance(config, dict) else None,
            job=job_info,
        )

    def _wait_for_finalize(self, run_id: str | None, timeout: float = 5.0) -> None:
        """Give the watcher thread time to record the end of a job that has just exited."""
        with self._lock:
            job = self._job
        if job is None or (run_id is not None and job.run_id != run_id) or job.finished.is_set() or job.alive():
            return
        if job.popen is None:
            self._finalize(job)
        job.finished.wait(timeout)

    def _state(self, run_id: str, run_dir: Path, progress: Mapping, job_info: Mapping) -> str:
        with self._lock:
            job = self._job
            if job is not None and job.run_id == run_id and not job.finished.is_set() and job.alive():
                return "running"

        status = progress.get("status")
        if status in FINISHED_STATES:
            return status
        if job_info.get("finished_at") is not None:
            # The manager saw the end but could not write progress.json.
            return "cancelled" if job_info.get("cancel_requested") else "failed"
        pid = job_info.get("pid")
        if isinstance(pid, int) and _pid_alive(pid, run_dir):
            return "running"
        return "interrupted"

    def _adopt_running_job(self) -> None:
        """Take over a trainer that a previous server started and that still runs.

        The trainer lives in its own session, so it survives a server restart;
        adopting it keeps "one job at a time" true and lets the user cancel it.
        """
        for run_id in self.list_runs():
            run_dir = self.runs_dir / run_id
            info = _read_json(run_dir / JOB_FILE) or {}
            pid = info.get("pid")
            if info.get("finished_at") is None and isinstance(pid, int) and _pid_alive(pid, run_dir):
                logger.info("Run %s (pid %d) is still running; watching it", run_id, pid)
                self._job = _Job(run_id, run_dir, pid, popen=None)
                return


# ---------------------------------------------------------------------------
# Arguments and data checks


def train_args(flags: Mapping[str, Any]) -> list[str]:
    """Turn `{"embed_pt": "x.pt", "epochs": 5, "use_bias": True, "hidden_layers": [2]}` into CLI arguments.

    None values are left out, True becomes a bare flag, False is left out,
    and lists become space-separated values after their flag.
    """
    argv: list[str] = []
    for name, value in flags.items():
        flag = name if name.startswith("--") else f"--{name}"
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv.append(flag)
            argv.extend(str(item) for item in value)
        else:
            argv.extend([flag, str(value)])
    return argv


def _flag_value(argv: Sequence[str], flag: str) -> str:
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise JobInputError(f"missing {flag}: the trainer needs an embedding file (.pt) and its metadata file (.json)")


def check_embedding_files(embed_pt: str | os.PathLike, meta_json: str | os.PathLike) -> None:
    """Raise JobInputError unless the embedding file and its metadata file exist, load and fit together.

    `mrm.data.read_embedding_files` memory-maps the tensor, so this check costs
    little memory even for a multi-gigabyte file.
    """
    from mrm.data import DataError, read_embedding_files

    for path, kind in ((embed_pt, "embedding file (.pt)"), (meta_json, "metadata file (.json)")):
        if path is None or not str(path).strip():
            raise JobInputError(f"no {kind} given")
        if not Path(path).is_file():
            raise JobInputError(f"{kind} not found: {path}")

    try:
        read_embedding_files(embed_pt, meta_json)
    except DataError as error:
        raise JobInputError(str(error)) from error


def _epoch(value: Any) -> int | None:
    epoch = _int_or_none(value)
    return epoch if epoch is None or epoch >= 0 else None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


_MANAGERS: dict[Path, JobManager] = {}
_MANAGERS_LOCK = threading.Lock()


def shared_manager(runs_dir: str | os.PathLike | None = None) -> JobManager:
    """Return this process's manager for `runs_dir`, so that every caller sees the same running job."""
    path = Path(runs_dir if runs_dir is not None else default_runs_dir()).resolve()
    with _MANAGERS_LOCK:
        if path not in _MANAGERS:
            _MANAGERS[path] = JobManager(path)
        return _MANAGERS[path]
