"""Start-up checks of `app.py`: the browser-state secret, the device and the port, run as a user would."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from app_server import REPO_ROOT

from mrm.runtime import (
    BROWSER_STATE_SECRET_ENV,
    RuntimeConfigError,
    browser_state_secret,
    check_device,
    check_port_free,
    default_secret_path,
    parse_app_args,
)

START_TIMEOUT_S = 60


def run_app(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop(BROWSER_STATE_SECRET_ENV, None)
    return subprocess.run([sys.executable, str(REPO_ROOT / "app.py"), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=START_TIMEOUT_S)


# ----------------------------------------------------------------------------- browser-state secret


def test_secret_path_follows_xdg_cache_home(tmp_path):
    path = default_secret_path({"XDG_CACHE_HOME": str(tmp_path)})
    assert path == tmp_path / "mrm" / "browser_state_secret"


def test_secret_path_default_home_cache():
    assert default_secret_path({}) == Path.home() / ".cache" / "mrm" / "browser_state_secret"


def test_secret_created_with_owner_only_mode(tmp_path):
    path = tmp_path / "mrm" / "secret"
    browser_state_secret(environ={}, path=path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_secret_stable_across_calls(tmp_path):
    path = tmp_path / "secret"
    assert browser_state_secret(environ={}, path=path) == browser_state_secret(environ={}, path=path)


def test_secret_long_enough(tmp_path):
    assert len(browser_state_secret(environ={}, path=tmp_path / "secret")) >= 32


def test_secret_reads_existing_file(tmp_path):
    path = tmp_path / "secret"
    path.write_text("kept-from-last-start\n")
    assert browser_state_secret(environ={}, path=path) == "kept-from-last-start"


def test_secret_environment_wins(tmp_path):
    path = tmp_path / "secret"
    secret = browser_state_secret(environ={BROWSER_STATE_SECRET_ENV: "from-env"}, path=path)
    assert secret == "from-env"
    assert not path.exists()


def test_secret_leaves_no_temporary_files(tmp_path):
    browser_state_secret(environ={}, path=tmp_path / "secret")
    assert [item.name for item in tmp_path.iterdir()] == ["secret"]


def test_secret_empty_file_rejected(tmp_path):
    path = tmp_path / "secret"
    path.write_text("")
    # An empty file reads as missing, so the link step keeps it and the check names the file.
    with pytest.raises(RuntimeConfigError, match="empty"):
        browser_state_secret(environ={}, path=path)


# ----------------------------------------------------------------------------- device and port


def test_check_device_cuda_without_cuda():
    with pytest.raises(RuntimeConfigError, match="CUDA is not available.*use --device cpu"):
        check_device("cuda:1", cuda_available=lambda: False)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_check_device_accepts_available(device):
    check_device(device, cuda_available=lambda: True)


def test_check_port_free_busy_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeConfigError, match=f"port {port} .*already in use.*--port"):
            check_port_free("127.0.0.1", port)


def test_check_port_free_without_port():
    check_port_free("127.0.0.1", None)


# ----------------------------------------------------------------------------- app.py and its flags


def test_app_busy_port_exits_with_message(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_app("--offline", "--host", "127.0.0.1", "--port", str(port), tmp_path=tmp_path)
    assert result.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_app_cuda_without_cuda_exits_with_message(tmp_path):
    result = run_app("--offline", "--device", "cuda", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "CUDA is not available" in result.stderr
    assert "use --device cpu" in result.stderr
    assert "Traceback" not in result.stderr


def test_app_help_names_secret(capsys):
    with pytest.raises(SystemExit):
        parse_app_args(["--help"])
    assert BROWSER_STATE_SECRET_ENV in capsys.readouterr().out
