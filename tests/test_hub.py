"""Tests for mrm.hub against a local Hub cache and a fake Hub server on 127.0.0.1.

The cache tests build the `models--org--name/{blobs,refs,snapshots}` layout
that huggingface_hub writes, switch on offline mode and go through the real
huggingface_hub download code. The server tests point huggingface_hub at a
small HTTP server started here, so that network, permission and revision
failures come from real HTTP responses.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub._tree_cache import (  # private module in huggingface_hub 2.4, writes the listing it caches
    TreeCacheEntry,
    write_tree_cache,
)
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import CommitInfo

from mrm.evaluate import summarize
from mrm.hub import HubError, load_checkpoint, push_checkpoint, render_model_card, resolve_checkpoint
from mrm.model import MRM, CheckpointError, load_mrm, save_mrm

IN_DIM = 8
COMMIT_OLD = "a" * 40
COMMIT_NEW = "b" * 40
PT_NAME = "mrm_reddit150_best.pt"


# ----------------------------------------------------------------------------- helpers


def tiny_model(seed: int) -> MRM:
    torch.manual_seed(seed)
    return MRM(in_dim=IN_DIM, hidden_layers=[2])


def published_pt_bytes(model: MRM) -> bytes:
    """Serialise like the published checkpoints: a plain `torch.save` of the state dict."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def safetensors_files(model: MRM, tmp_path: Path) -> dict[str, bytes]:
    folder = tmp_path / "saved"
    save_mrm(model, folder, extra_config={"encoder": "org/encoder"})
    return {name: (folder / name).read_bytes() for name in ("model.safetensors", "config.json")}


def add_cached_commit(cache: Path, repo_id: str, commit: str, files: dict[str, bytes], refs=("main",)) -> Path:
    """Write one commit of a repo into a Hub cache as huggingface_hub lays it out, and return its snapshot folder."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    for name, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        ref_path = storage / "refs" / ref
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        ref_path.write_text(commit)
    return snapshot


def printed_tracebacks(error: BaseException) -> int:
    """Count the tracebacks Python prints for `error`, chained ones included."""
    return "".join(traceback.format_exception(error)).count("Traceback (most recent call last)")


def weights_equal(first: MRM, second: MRM) -> bool:
    first_state, second_state = first.state_dict(), second.state_dict()
    return first_state.keys() == second_state.keys() and all(
        torch.equal(first_state[key], second_state[key]) for key in first_state
    )


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """Return an empty Hub cache, used by default, with no token and offline mode off."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    return cache


@pytest.fixture
def offline_cache(hub_cache, monkeypatch, fake_hub) -> Path:
    """Return the Hub cache with HF_HUB_OFFLINE=1. The fake server records any request made anyway."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache


class FakeHub:
    """Routes of the fake Hub server, mapping a path to (status, headers, body), and a log of requests."""

    def __init__(self):
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.default: tuple[int, dict[str, str], bytes] = (404, {"X-Error-Code": "EntryNotFound"}, b"")

    def add(self, path: str, status: int = 200, headers: dict | None = None, body: bytes | dict = b""):
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.routes[path] = (status, headers or {}, body)

    def add_file(self, repo_id: str, revision: str, commit: str, name: str, data: bytes):
        etag = hashlib.sha256(data).hexdigest()
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
        self.add(f"/{repo_id}/resolve/{revision}/{name}", headers=headers, body=data)
        self.add(f"/{repo_id}/resolve/{commit}/{name}", headers=headers, body=data)


@pytest.fixture
def fake_hub(hub_cache, monkeypatch):
    hub = FakeHub()

    class Handler(BaseHTTPRequestHandler):
        def _respond(self, send_body: bool):
            path = self.path.split("?")[0]
            hub.requests.append((self.command, path, self.headers.get("Authorization")))
            status, headers, body = hub.routes.get(path, hub.default)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def do_GET(self):
            self._respond(send_body=True)

        def do_HEAD(self):
            self._respond(send_body=False)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    yield hub
    server.shutdown()
    server.server_close()


def model_info_body(repo_id: str, commit: str, names: list[str]) -> dict:
    return {"id": repo_id, "sha": commit, "private": False, "siblings": [{"rfilename": name} for name in names]}


# ----------------------------------------------------------------------------- local paths


def test_resolve_local_file_returned_as_is(tmp_path):
    path = tmp_path / "head.pt"
    path.write_bytes(published_pt_bytes(tiny_model(0)))
    assert resolve_checkpoint(path) == path


def test_resolve_local_folder_returned_as_is(tmp_path):
    folder = save_mrm(tiny_model(0), tmp_path / "run" / "best")
    assert resolve_checkpoint(str(folder)) == folder


def test_resolve_local_folder_without_checkpoint_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("no weights here")
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        resolve_checkpoint(tmp_path)


def test_resolve_missing_path_names_it(hub_cache, tmp_path):
    missing = tmp_path / "runs" / "best.pt"
    with pytest.raises(HubError) as caught:
        resolve_checkpoint(str(missing))
    assert str(missing) in str(caught.value)


def test_resolve_missing_relative_file_names_it(offline_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HubError) as caught:
        resolve_checkpoint("runs/best.pt")
    assert f"no such file or folder 'runs/best.pt' ({tmp_path / 'runs' / 'best.pt'})" in str(caught.value)


@pytest.mark.parametrize("text", ["nope_dir", "./ckpt", "a/b/c", "~/ckpt", "org/file.pt"])
def test_resolve_path_like_names_are_local_errors(offline_cache, tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HubError, match="no such file or folder"):
        resolve_checkpoint(text)


def test_resolve_repo_id_has_no_local_hint(offline_cache):
    with pytest.raises(HubError) as caught:
        resolve_checkpoint("org/missing")
    assert "No local file" not in str(caught.value)


# ----------------------------------------------------------------------------- offline cache


def test_resolve_cached_pt_repo_offline(offline_cache):
    add_cached_commit(offline_cache, "org/reddit150", COMMIT_NEW, {PT_NAME: published_pt_bytes(tiny_model(0))})
    path = resolve_checkpoint("org/reddit150")
    assert path == offline_cache / "models--org--reddit150" / "snapshots" / COMMIT_NEW / PT_NAME


def test_load_cached_pt_repo_offline(offline_cache):
    model = tiny_model(0)
    add_cached_commit(offline_cache, "org/reddit150", COMMIT_NEW, {PT_NAME: published_pt_bytes(model)})
    assert weights_equal(load_checkpoint("org/reddit150"), model)


def test_load_cached_pt_repo_sends_no_request(offline_cache, fake_hub):
    add_cached_commit(offline_cache, "org/reddit150", COMMIT_NEW, {PT_NAME: published_pt_bytes(tiny_model(0))})
    load_checkpoint("org/reddit150")
    assert fake_hub.requests == []


def test_offline_env_after_import(offline_cache, fake_hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    add_cached_commit(offline_cache, "org/reddit150", COMMIT_NEW, {PT_NAME: published_pt_bytes(tiny_model(0))})
    load_checkpoint("org/reddit150")
    assert fake_hub.requests == []


def test_transformers_offline_env_after_import(offline_cache, fake_hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    add_cached_commit(offline_cache, "org/reddit150", COMMIT_NEW, {PT_NAME: published_pt_bytes(tiny_model(0))})
    load_checkpoint("org/reddit150")
    assert fake_hub.requests == []


def test_load_cached_safetensors_repo_offline(offline_cache, tmp_path):
    model = tiny_model(1)
    add_cached_commit(offline_cache, "org/new-head", COMMIT_NEW, safetensors_files(model, tmp_path))
    assert weights_equal(load_checkpoint("org/new-head"), model)


def test_resolve_cached_repo_fetches_config(offline_cache, tmp_path):
    add_cached_commit(offline_cache, "org/new-head", COMMIT_NEW, safetensors_files(tiny_model(1), tmp_path))
    path = resolve_checkpoint("org/new-head")
    assert (path.parent / "config.json").is_file()


def test_resolve_explicit_cache_dir(offline_cache, tmp_path):
    other_cache = tmp_path / "other-cache"
    add_cached_commit(other_cache, "org/reddit150", COMMIT_NEW, {PT_NAME: published_pt_bytes(tiny_model(0))})
    path = resolve_checkpoint("org/reddit150", cache_dir=other_cache)
    assert path.is_relative_to(other_cache)


def test_resolve_checkpoint_in_subfolder(offline_cache, tmp_path):
    files = {f"weights/{name}": data for name, data in safetensors_files(tiny_model(1), tmp_path).items()}
    add_cached_commit(offline_cache, "org/nested", COMMIT_NEW, files)
    path = resolve_checkpoint("org/nested")
    assert path == offline_cache / "models--org--nested" / "snapshots" / COMMIT_NEW / "weights" / "model.safetensors"


def test_resolve_uses_cached_tree_listing(offline_cache, tmp_path):
    """The commit's cached listing names config.json, but only the weights were downloaded."""
    model = tiny_model(1)
    files = safetensors_files(model, tmp_path)
    add_cached_commit(offline_cache, "org/partial", COMMIT_NEW, {"model.safetensors": files["model.safetensors"]})
    entries = {name: TreeCacheEntry(size=len(data), blob_id="0" * 40) for name, data in files.items()}
    write_tree_cache(str(offline_cache / "models--org--partial"), COMMIT_NEW, entries)
    assert weights_equal(load_checkpoint("org/partial"), model)


def test_resolve_missing_config_logs_warning(offline_cache, tmp_path, caplog):
    files = safetensors_files(tiny_model(1), tmp_path)
    add_cached_commit(offline_cache, "org/partial", COMMIT_NEW, {"model.safetensors": files["model.safetensors"]})
    entries = {name: TreeCacheEntry(size=len(data), blob_id="0" * 40) for name, data in files.items()}
    write_tree_cache(str(offline_cache / "models--org--partial"), COMMIT_NEW, entries)
    resolve_checkpoint("org/partial")
    assert "without its config.json" in caplog.text


def test_from_pretrained_cached_safetensors_repo(offline_cache, tmp_path):
    model = tiny_model(1)
    add_cached_commit(offline_cache, "org/new-head", COMMIT_NEW, safetensors_files(model, tmp_path))
    assert weights_equal(MRM.from_pretrained("org/new-head"), model)


def test_from_pretrained_cached_pt_repo(offline_cache):
    model = tiny_model(0)
    add_cached_commit(offline_cache, "org/reddit150", COMMIT_NEW, {PT_NAME: published_pt_bytes(model)})
    assert weights_equal(MRM.from_pretrained("org/reddit150"), model)


def test_from_pretrained_local_folder(tmp_path):
    model = tiny_model(2)
    folder = save_mrm(model, tmp_path / "best")
    assert weights_equal(MRM.from_pretrained(str(folder)), model)


def test_resolve_two_pt_files_names_both(offline_cache):
    files = {"epoch_10.pt": published_pt_bytes(tiny_model(0)), "epoch_20.pt": published_pt_bytes(tiny_model(1))}
    add_cached_commit(offline_cache, "org/two-heads", COMMIT_NEW, files)
    with pytest.raises(HubError) as caught:
        resolve_checkpoint("org/two-heads")
    assert "epoch_10.pt, epoch_20.pt" in str(caught.value)


def test_resolve_two_pt_files_gives_fix(offline_cache):
    files = {"epoch_10.pt": published_pt_bytes(tiny_model(0)), "epoch_20.pt": published_pt_bytes(tiny_model(1))}
    add_cached_commit(offline_cache, "org/two-heads", COMMIT_NEW, files)
    with pytest.raises(HubError, match="hf download org/two-heads FILE"):
        resolve_checkpoint("org/two-heads")


@pytest.mark.parametrize(
    "expected",
    [
        "'ModalityDance/MRM-Reddit150-V2'",
        "HF_HUB_OFFLINE",
        "`hf download ModalityDance/MRM-Reddit150-V2`",
        "huggingface-cli download ModalityDance/MRM-Reddit150-V2",
        "local checkpoint file or folder",
        "python app.py --offline",
    ],
)
def test_resolve_uncached_repo_offline_message(offline_cache, expected):
    with pytest.raises(HubError) as caught:
        resolve_checkpoint("ModalityDance/MRM-Reddit150-V2")
    assert expected in str(caught.value)


def test_resolve_uncached_repo_offline_hides_traceback(offline_cache):
    with pytest.raises(HubError) as caught:
        resolve_checkpoint("ModalityDance/MRM-Reddit150-V2")
    assert printed_tracebacks(caught.value) == 1


def test_resolve_local_files_only_without_offline_env(hub_cache, fake_hub):
    with pytest.raises(HubError, match="offline mode is on"):
        resolve_checkpoint("org/missing", local_files_only=True)
    assert fake_hub.requests == []


def test_resolve_force_download_offline_raises(offline_cache):
    add_cached_commit(offline_cache, "org/reddit150", COMMIT_NEW, {PT_NAME: published_pt_bytes(tiny_model(0))})
    with pytest.raises(HubError, match="force a download"):
        resolve_checkpoint("org/reddit150", force_download=True)


# ----------------------------------------------------------------------------- revisions


@pytest.fixture
def two_commit_repo(offline_cache) -> tuple[MRM, MRM]:
    old, new = tiny_model(10), tiny_model(11)
    add_cached_commit(offline_cache, "org/pinned", COMMIT_OLD, {PT_NAME: published_pt_bytes(old)}, refs=("v1",))
    add_cached_commit(offline_cache, "org/pinned", COMMIT_NEW, {PT_NAME: published_pt_bytes(new)}, refs=("main",))
    return old, new


def test_revision_default_is_main(two_commit_repo):
    _, new = two_commit_repo
    assert weights_equal(load_checkpoint("org/pinned"), new)


def test_revision_branch_argument(two_commit_repo):
    old, _ = two_commit_repo
    assert weights_equal(load_checkpoint("org/pinned", revision="v1"), old)


def test_revision_suffix_in_repo_id(two_commit_repo):
    old, _ = two_commit_repo
    assert weights_equal(load_checkpoint("org/pinned@v1"), old)


def test_revision_commit_hash(two_commit_repo):
    old, _ = two_commit_repo
    assert weights_equal(load_checkpoint(f"org/pinned@{COMMIT_OLD}"), old)


def test_revision_conflict_raises(two_commit_repo):
    with pytest.raises(HubError, match="Conflicting revisions"):
        resolve_checkpoint("org/pinned@v1", revision="main")


def test_revision_uncached_offline_names_it(two_commit_repo):
    with pytest.raises(HubError, match="revision 'v2'"):
        resolve_checkpoint("org/pinned", revision="v2")


def test_revision_uncached_offline_gives_download_command(two_commit_repo):
    with pytest.raises(HubError, match="hf download org/pinned --revision v2"):
        resolve_checkpoint("org/pinned", revision="v2")


# ----------------------------------------------------------------------------- online, fake server


def test_online_download_fills_cache(hub_cache, fake_hub):
    model = tiny_model(3)
    data = published_pt_bytes(model)
    fake_hub.add("/api/models/org/online/revision/main", body=model_info_body("org/online", COMMIT_NEW, [PT_NAME]))
    fake_hub.add_file("org/online", "main", COMMIT_NEW, PT_NAME, data)
    path = resolve_checkpoint("org/online", revision="main")
    assert path == hub_cache / "models--org--online" / "snapshots" / COMMIT_NEW / PT_NAME


def test_online_download_then_offline_load(hub_cache, fake_hub, monkeypatch):
    model = tiny_model(3)
    fake_hub.add("/api/models/org/online", body=model_info_body("org/online", COMMIT_NEW, [PT_NAME]))
    fake_hub.add_file("org/online", "main", COMMIT_NEW, PT_NAME, published_pt_bytes(model))
    resolve_checkpoint("org/online")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert weights_equal(load_checkpoint("org/online"), model)


def test_online_download_fetches_config(hub_cache, fake_hub, tmp_path):
    files = safetensors_files(tiny_model(4), tmp_path)
    fake_hub.add("/api/models/org/st", body=model_info_body("org/st", COMMIT_NEW, sorted(files)))
    for name, data in files.items():
        fake_hub.add_file("org/st", "main", COMMIT_NEW, name, data)
    path = resolve_checkpoint("org/st")
    assert (path.parent / "config.json").read_bytes() == files["config.json"]


def test_online_token_from_environment(hub_cache, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_testtoken")
    fake_hub.add("/api/models/org/online", body=model_info_body("org/online", COMMIT_NEW, [PT_NAME]))
    fake_hub.add_file("org/online", "main", COMMIT_NEW, PT_NAME, published_pt_bytes(tiny_model(3)))
    resolve_checkpoint("org/online")
    assert {auth for _, _, auth in fake_hub.requests} == {"Bearer hf_testtoken"}


def test_online_missing_repo_message(hub_cache, fake_hub):
    fake_hub.add("/api/models/org/missing", status=401, headers={"X-Error-Code": "RepoNotFound"})
    with pytest.raises(HubError) as caught:
        resolve_checkpoint("org/missing")
    message = str(caught.value)
    assert "'org/missing'" in message
    assert "not found" in message
    assert "HF_TOKEN" in message


def test_online_gated_repo_message(hub_cache, fake_hub):
    fake_hub.add("/api/models/org/gated", status=403, headers={"X-Error-Code": "GatedRepo"})
    with pytest.raises(HubError) as caught:
        resolve_checkpoint("org/gated")
    message = str(caught.value)
    assert "gated" in message
    assert "HF_TOKEN" in message


def test_online_invalid_token_message(hub_cache, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_revoked")
    headers = {"X-Error-Message": "Invalid credentials in Authorization header"}
    fake_hub.add("/api/models/org/private", status=401, headers=headers)
    with pytest.raises(HubError, match="rejected the token"):
        resolve_checkpoint("org/private")


def test_online_missing_revision_message(hub_cache, fake_hub):
    fake_hub.add("/api/models/org/online/revision/v9", status=404, headers={"X-Error-Code": "RevisionNotFound"})
    with pytest.raises(HubError) as caught:
        resolve_checkpoint("org/online@v9")
    message = str(caught.value)
    assert "no revision 'v9'" in message
    assert "'org/online'" in message


def test_online_server_error_message(hub_cache, fake_hub):
    fake_hub.add("/api/models/org/online", status=500)
    with pytest.raises(HubError, match="HTTP 500"):
        resolve_checkpoint("org/online")


def test_online_server_error_falls_back_to_cache(hub_cache, fake_hub):
    model = tiny_model(5)
    add_cached_commit(hub_cache, "org/online", COMMIT_NEW, {PT_NAME: published_pt_bytes(model)})
    fake_hub.default = (500, {}, b"")
    assert weights_equal(load_checkpoint("org/online"), model)


def test_online_missing_repo_hides_traceback(hub_cache, fake_hub):
    fake_hub.add("/api/models/org/missing", status=401, headers={"X-Error-Code": "RepoNotFound"})
    with pytest.raises(HubError) as caught:
        resolve_checkpoint("org/missing")
    assert printed_tracebacks(caught.value) == 1


@pytest.fixture
def unreachable_endpoint(hub_cache, monkeypatch) -> str:
    """Point the Hub endpoint at a local port that was free a moment ago, so connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    return endpoint


@pytest.mark.parametrize("expected", ["could not be reached", "'org/online'", "hf download org/online", "app.py --offline"])
def test_unreachable_hub_message(unreachable_endpoint, expected):
    with pytest.raises(HubError) as caught:
        resolve_checkpoint("org/online")
    assert expected in str(caught.value)


def test_unreachable_hub_uses_cache(unreachable_endpoint, hub_cache):
    model = tiny_model(6)
    add_cached_commit(hub_cache, "org/online", COMMIT_NEW, {PT_NAME: published_pt_bytes(model)})
    assert weights_equal(load_checkpoint("org/online"), model)


# ----------------------------------------------------------------------------- model card

CARD_INFO = {
    "encoder": "Skywork/Skywork-Reward-V2-Llama-3.1-8B",
    "dataset": "openai/summarize_from_feedback",
    "training": {"inner_lr": 0.005, "meta_lr": 0.005, "epochs": 200, "rpo_ratio": 0.5},
    "results": {
        "seen": 0.696,
        "unseen": 0.652,
        "overall": 0.674,
        "worst10": 0.41,
        "init": {"seen": 0.6, "unseen": 0.59, "overall": 0.595, "worst10": 0.35},
        "num_seen": 40,
        "num_unseen": 41,
        "protocol": {"inner_lr": 0.005, "eval_inner_epochs": 1, "seed": 42},
        "selected_on": "test: best overall test accuracy over evaluated epochs (published protocol, optimistic)",
        "best_epoch": 120,
    },
}


def test_model_card_front_matter():
    card = ModelCard(render_model_card(tiny_model(0), {**CARD_INFO, "repo_id": "org/head"}))
    assert card.data.library_name == "mrm"
    assert card.data.base_model == "Skywork/Skywork-Reward-V2-Llama-3.1-8B"
    assert "reward-model" in card.data.tags
    assert card.data.datasets == ["openai/summarize_from_feedback"]


@pytest.mark.parametrize(
    "expected",
    [
        "| Embedding size (in_dim) | 8 |",
        "| Base rewards (K) | 2 |",
        "| Linear layers (hidden_layers) | [2] |",
        "`Skywork/Skywork-Reward-V2-Llama-3.1-8B`",
        "| `inner_lr` | `0.005` |",
        "| `epochs` | `200` |",
        "| Seen users (meta-training tasks) | 69.6% | 60.0% |",
        "| Unseen users (not used in meta-training) | 65.2% | 59.0% |",
        "| All users | 67.4% | 59.5% |",
        "| Worst 10% of users (their mean) | 41.0% | 35.0% |",
        "Users evaluated: 40 seen and 41 unseen.",
        "Adaptation before scoring: 1 Adam step(s) on the mixture logits at inner_lr 0.005.",
        "Epoch 120 was selected by the best overall test accuracy",
        "optimistic",
        'load_checkpoint("org/head")',
    ],
)
def test_model_card_records(expected):
    text = render_model_card(tiny_model(0), {**CARD_INFO, "repo_id": "org/head"})
    assert expected in text


def test_model_card_val_selection():
    label = "val: held-out training pairs of unseen users (test pairs untouched)"
    results = {**CARD_INFO["results"], "selected_on": label, "best_epoch": 80}
    text = render_model_card(tiny_model(0), {**CARD_INFO, "results": results})
    expected = "Epoch 80 was selected on `val` data: held-out training pairs of unseen users, without looking at the test pairs."
    assert expected in text


def test_model_card_val_selection_not_optimistic():
    results = {**CARD_INFO["results"], "selected_on": "val", "best_epoch": 80}
    text = render_model_card(tiny_model(0), {**CARD_INFO, "results": results})
    assert "optimistic" not in text


def test_model_card_last_epoch():
    results = {**CARD_INFO["results"], "selected_on": "last: final epoch", "best_epoch": 200}
    text = render_model_card(tiny_model(0), {**CARD_INFO, "results": results})
    assert "Epoch 200 is the final training epoch." in text


def test_model_card_from_evaluate_summary():
    seen, unseen = torch.tensor([0.5, 0.75, 1.0]), torch.tensor([])
    results = {**summarize(seen, unseen), "init": summarize(seen * 0.5, unseen)}
    text = render_model_card(tiny_model(0), {"results": results})
    assert "| All users | 75.0% | 37.5% |" in text


def test_model_card_nan_accuracy_is_na():
    text = render_model_card(tiny_model(0), {"results": {"seen": 0.7, "unseen": float("nan")}})
    assert "| Unseen users (not used in meta-training) | n/a |" in text


def test_model_card_missing_selection():
    results = {"seen": 0.7}
    text = render_model_card(tiny_model(0), {"results": results})
    assert "does not record how the reported epoch was selected" in text


def test_model_card_demo_encoder_has_no_base_model():
    card = ModelCard(render_model_card(tiny_model(0), {"encoder": "demo"}))
    assert card.data.base_model is None


def test_model_card_rejects_percentages():
    with pytest.raises(ValueError, match="'seen' is 69.6"):
        render_model_card(tiny_model(0), {"results": {"seen": 69.6}})


# ----------------------------------------------------------------------------- push


class UploadRecorder:
    """Replacement for HfApi's repo and upload calls that keeps a copy of the uploaded folder."""

    def __init__(self, tmp_path: Path):
        self.copy = tmp_path / "uploaded"
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, api, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, "token": api.token, **kwargs}))

    def create_branch(self, api, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, api, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", {"repo_id": repo_id, **kwargs}))
        shutil.copytree(folder_path, self.copy)
        url = f"https://huggingface.co/{repo_id}/commit/{COMMIT_NEW}"
        return CommitInfo(commit_url=url, commit_message="", commit_description="", oid=COMMIT_NEW)


@pytest.fixture
def recorder(tmp_path, monkeypatch, hub_cache) -> UploadRecorder:
    recorder = UploadRecorder(tmp_path)
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: recorder.create_repo(api, repo_id, **kw))
    monkeypatch.setattr(HfApi, "create_branch", lambda api, repo_id, **kw: recorder.create_branch(api, repo_id, **kw))
    monkeypatch.setattr(HfApi, "upload_folder", lambda api, **kw: recorder.upload_folder(api, **kw))
    return recorder


def test_push_without_token_raises(recorder):
    with pytest.raises(HubError, match="no Hugging Face token"):
        push_checkpoint(tiny_model(0), "org/head", CARD_INFO)


def test_push_without_token_sends_nothing(recorder):
    with pytest.raises(HubError):
        push_checkpoint(tiny_model(0), "org/head", CARD_INFO)
    assert recorder.calls == []


def test_push_offline_raises_before_request(recorder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="offline mode is on"):
        push_checkpoint(tiny_model(0), "org/head", CARD_INFO, token="hf_write")
    assert recorder.calls == []


def test_push_returns_commit_url(recorder):
    url = push_checkpoint(tiny_model(0), "org/head", CARD_INFO, token="hf_write")
    assert url == f"https://huggingface.co/org/head/commit/{COMMIT_NEW}"


def test_push_uploads_three_files(recorder):
    push_checkpoint(tiny_model(0), "org/head", CARD_INFO, token="hf_write")
    assert sorted(path.name for path in recorder.copy.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_push_uploaded_weights_load_back(recorder):
    model = tiny_model(7)
    push_checkpoint(model, "org/head", CARD_INFO, token="hf_write")
    assert weights_equal(load_mrm(recorder.copy), model)


def test_push_config_records_encoder(recorder):
    push_checkpoint(tiny_model(0), "org/head", CARD_INFO, token="hf_write")
    config = json.loads((recorder.copy / "config.json").read_text())
    assert config["encoder_id"] == "Skywork/Skywork-Reward-V2-Llama-3.1-8B"


def test_push_readme_is_our_card(recorder):
    push_checkpoint(tiny_model(0), "org/head", CARD_INFO, token="hf_write")
    card = ModelCard.load(recorder.copy / "README.md")
    assert card.data.library_name == "mrm"


def test_push_token_from_environment(recorder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    push_checkpoint(tiny_model(0), "org/head", CARD_INFO)
    assert recorder.calls[0] == (
        "create_repo",
        {"repo_id": "org/head", "token": "hf_from_env", "private": False, "exist_ok": True, "repo_type": "model"},
    )


def test_push_private_repo(recorder):
    push_checkpoint(tiny_model(0), "org/head", CARD_INFO, token="hf_write", private=True)
    assert recorder.calls[0][1]["private"] is True


def test_push_revision_creates_branch(recorder):
    push_checkpoint(tiny_model(0), "org/head", CARD_INFO, token="hf_write", revision="experiment")
    assert [name for name, _ in recorder.calls] == ["create_repo", "create_branch", "upload_folder"]


def test_push_revision_is_uploaded_to(recorder):
    push_checkpoint(tiny_model(0), "org/head", CARD_INFO, token="hf_write", revision="experiment")
    assert recorder.calls[-1][1]["revision"] == "experiment"


def test_push_forbidden_message(recorder, monkeypatch):
    def reject_create_repo(api, repo_id, **kwargs):
        response = httpx2.Response(403, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
        raise HfHubHTTPError("403 Forbidden", response=response)

    monkeypatch.setattr(HfApi, "create_repo", reject_create_repo)
    with pytest.raises(HubError, match="no write access"):
        push_checkpoint(tiny_model(0), "org/head", CARD_INFO, token="hf_read_only")


def test_push_invalid_repo_id(recorder):
    with pytest.raises(HubError, match="not a Hub repo id"):
        push_checkpoint(tiny_model(0), "org/head/extra", CARD_INFO, token="hf_write")


def test_model_card_leaves_out_local_paths():
    training = {"embed_pt": "/home/me/data.pt", "meta_json": "/home/me/data.json", "output_path": "/home/me/run",
                "device": "cuda:0", "ckpt": "/home/me/start/best", "inner_lr": 0.005}
    text = render_model_card(tiny_model(0), {**CARD_INFO, "training": training})
    assert "/home/me" not in text
    assert "cuda:0" not in text
    assert "| `inner_lr` | `0.005` |" in text


def test_model_card_keeps_hub_starting_checkpoint():
    text = render_model_card(tiny_model(0), {**CARD_INFO, "training": {"ckpt": "ModalityDance/MRM-Reddit150-V2"}})
    assert "`ModalityDance/MRM-Reddit150-V2`" in text


def test_offline_missing_revision_of_cached_repo(offline_cache):
    add_cached_commit(offline_cache, "org/reddit150", COMMIT_NEW, {PT_NAME: published_pt_bytes(tiny_model(0))})
    with pytest.raises(HubError, match="has the repo but not the revision 'v9'") as error:
        resolve_checkpoint("org/reddit150@v9")
    assert "leave out the revision" in str(error.value)


def test_repo_id_with_empty_revision_is_rejected(offline_cache):
    with pytest.raises(HubError, match="names no revision"):
        resolve_checkpoint("org/reddit150@")
