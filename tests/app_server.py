"""Launch `app.py` as a subprocess on a free 127.0.0.1 port for client and browser tests.

Usage:

    with launched_app() as url:
        client = gradio_client.Client(url)

The app runs in offline demo mode (demo encoder, committed checkpoint in
`assets/demo/`) with analytics and Hub access switched off.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"app.py exited with code {process.returncode} before serving {url}; log:\n"
                + log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
            )
        try:
            with urllib.request.urlopen(url + "config", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(
        f"app.py did not serve {url} within {timeout_s:.0f} s; log:\n"
        + log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    # The app runs in its own process group, so this reaches only its children.
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def launched_app(extra_args: Sequence[str] = (), env: dict[str, str] | None = None,
                 port: int | None = None) -> Iterator[str]:
    """Run `python app.py --offline` on `port` (default: a free one) and yield its URL (ending in "/").

    `extra_args` are appended to the command line; `env` entries override the
    environment. The server is stopped when the block exits, also on errors.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="mrm-app-") as tmp:
        tmp_dir = Path(tmp)
        args = [sys.executable, str(REPO_ROOT / "app.py"), "--offline", "--host", "127.0.0.1", "--port", str(port)]
        args += list(extra_args)

        child_env = {
            **os.environ,
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
            "MRM_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            # The browser-state secret file goes here, not into the user's cache.
            "XDG_CACHE_HOME": str(tmp_dir / "cache"),
            **(env or {}),
        }
        log_path = tmp_dir / "app.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                args, cwd=REPO_ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                _wait_until_ready(url, process, log_path, START_TIMEOUT_S)
                yield url
            finally:
                _stop(process)
