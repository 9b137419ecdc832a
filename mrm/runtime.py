"""App runtime: the choice of encoder and checkpoint, and the loaded pair.

Mode selection:

- GPU mode (the published setup): Skywork-Reward-V2-Llama-3.1-8B as encoder and
  `ModalityDance/MRM-Reddit150-V2` as checkpoint, picked when a CUDA device is
  present and the Hugging Face Hub responds within a few seconds;
- offline demo mode: the small demo encoder and the checkpoint committed under
  `assets/demo/`, picked otherwise or when offline mode is forced.

Flags and environment variables (`MRM_ENCODER`, `MRM_CHECKPOINT`,
`MRM_DEVICE`, `MRM_OFFLINE`) override single choices. The loaded runtime is
one module-level object per server process; sessions keep only labels and
mixture logits. This module does not import gradio.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import secrets
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor

from mrm.model import MRM, load_mrm

logger = logging.getLogger(__name__)

GPU_ENCODER = "Skywork/Skywork-Reward-V2-Llama-3.1-8B"
GPU_CHECKPOINT = "ModalityDance/MRM-Reddit150-V2"
DEMO_ENCODER = "demo"
DEMO_CHECKPOINT = str(Path(__file__).resolve().parents[1] / "assets" / "demo")
HUB_CHECK_TIMEOUT_S = 3.0
BROWSER_STATE_SECRET_ENV = "MRM_BROWSER_STATE_SECRET"
_TRUE = {"1", "true", "yes", "on"}


class RuntimeConfigError(ValueError):
    """An encoder/checkpoint choice that cannot run; the message names what to change."""


@dataclass
class AppConfig:
    """Command-line and environment settings of the app (`python app.py --help`)."""

    encoder: str | None = field(default=None, metadata={
        "help": "reward-model encoder: a Hub id, a local folder, or 'demo' (env MRM_ENCODER; default: by mode)"})
    checkpoint: str | None = field(default=None, metadata={
        "help": "MRM checkpoint: a Hub repo id, a folder or a file (env MRM_CHECKPOINT; default: by mode)"})
    device: str | None = field(default=None, metadata={
        "help": "torch device of the encoder, e.g. cuda, cuda:1 or cpu (env MRM_DEVICE; default: cuda in GPU mode)"})
    offline: bool = field(default=False, metadata={
        "help": "force the offline demo mode and make no network calls (env MRM_OFFLINE=1; also HF_HUB_OFFLINE=1)"})
    host: str | None = field(default=None, metadata={
        "help": "address to serve on (default: gradio's, 127.0.0.1 or GRADIO_SERVER_NAME)"})
    port: int | None = field(default=None, metadata={
        "help": "port to serve on (default: gradio's, 7860 or GRADIO_SERVER_PORT)"})


APP_EPILOG = (
    "Labels and the adapted profile are stored encrypted in the browser. The key is "
    f"{BROWSER_STATE_SECRET_ENV} when set, else a random key kept in $XDG_CACHE_HOME/mrm/browser_state_secret "
    "(default ~/.cache/mrm/browser_state_secret), so stored labels survive app restarts."
)


def _port_number(text: str) -> int:
    """Parse a `--port` value: a TCP port from 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: use a whole number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: use a number from 1 to 65535")
    return port


def parse_app_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> AppConfig:
    """Build an `AppConfig` from flags, falling back to the `MRM_*` environment variables."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(description="Personalised reward modeling app (Gradio).", epilog=APP_EPILOG)
    for item in fields(AppConfig):
        flag = f"--{item.name}"
        if item.name == "offline":
            parser.add_argument(flag, action="store_true", help=item.metadata["help"])
        elif item.name == "port":
            parser.add_argument(flag, type=_port_number, default=None, metavar="PORT", help=item.metadata["help"])
        else:
            parser.add_argument(flag, default=None, help=item.metadata["help"])
    args = parser.parse_args(argv)
    return AppConfig(
        encoder=args.encoder or environ.get("MRM_ENCODER") or None,
        checkpoint=args.checkpoint or environ.get("MRM_CHECKPOINT") or None,
        device=args.device or environ.get("MRM_DEVICE") or None,
        offline=args.offline or environ.get("MRM_OFFLINE", "").strip().lower() in _TRUE,
        host=args.host,
        port=args.port,
    )


@dataclass(frozen=True)
class ModeChoice:
    """The encoder, checkpoint and device the app will load, and why."""

    encoder: str
    checkpoint: str
    device: str
    offline: bool
    reason: str


def hub_reachable(timeout_s: float = HUB_CHECK_TIMEOUT_S, endpoint: str | None = None) -> bool:
    """Return True when the Hugging Face Hub API responds within `timeout_s` seconds."""
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/models/{GPU_CHECKPOINT}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s) as response:
            return response.status < 500
    except urllib.error.HTTPError as error:
        # 401/404 still prove the Hub is reachable; the download reports them later.
        return error.code < 500
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        logger.info("Hugging Face Hub not reachable at %s: %s", endpoint, error)
        return False


def choose_mode(
    config: AppConfig,
    environ: Mapping[str, str] | None = None,
    cuda_available: Callable[[], bool] = torch.cuda.is_available,
    check_hub: Callable[[], bool] = hub_reachable,
) -> ModeChoice:
    """Pick encoder, checkpoint and device from `config`, the machine and the network.

    The Hub is checked only when offline mode is not forced, HF_HUB_OFFLINE is
    not set and a CUDA device exists, so forced offline runs make no network call.
    """
    environ = os.environ if environ is None else environ
    hub_offline = environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE

    # Automatic choice, cheapest test first.
    if config.offline:
        offline, reason = True, "offline demo: offline mode forced (--offline or MRM_OFFLINE)"
    elif hub_offline:
        offline, reason = True, "offline demo: HF_HUB_OFFLINE is set"
    elif not cuda_available():
        offline, reason = True, "offline demo: no CUDA device"
    elif not check_hub():
        offline, reason = True, "offline demo: the Hugging Face Hub is not reachable"
    else:
        offline, reason = False, "GPU mode: CUDA device and Hugging Face Hub available"

    encoder = DEMO_ENCODER if offline else GPU_ENCODER
    checkpoint = DEMO_CHECKPOINT if offline else GPU_CHECKPOINT
    device = "cpu" if offline else "cuda"

    # Explicit settings win over the automatic choice, one by one.
    overrides = []
    if config.encoder:
        encoder = config.encoder
        overrides.append("encoder")
    if config.checkpoint:
        checkpoint = config.checkpoint
        overrides.append("checkpoint")
    if config.device:
        device = config.device
        overrides.append("device")
    if overrides:
        reason += f"; {', '.join(overrides)} set explicitly"
    return ModeChoice(encoder=encoder, checkpoint=checkpoint, device=device, offline=offline, reason=reason)


def check_device(device: str, cuda_available: Callable[[], bool] = torch.cuda.is_available) -> None:
    """Raise `RuntimeConfigError` when `device` is a CUDA device but CUDA is not available."""
    if device.strip().lower().startswith("cuda") and not cuda_available():
        raise RuntimeConfigError(f"CUDA is not available, so --device {device} cannot run; use --device cpu")


def check_port_free(host: str | None, port: int | None) -> None:
    """Raise `RuntimeConfigError` when `port` on `host` (default 127.0.0.1) is already in use.

    Without an explicit port gradio searches for a free one itself, so None passes.
    """
    if port is None:
        return
    address = host or "127.0.0.1"
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn does, so that connections of a just-stopped server in TIME_WAIT do not count as a user.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise RuntimeConfigError(f"cannot serve on {address}:{port}: {error.strerror}; "
                                         "pick another address with --host or port with --port") from None
            raise RuntimeConfigError(
                f"port {port} on {address} is already in use; stop the program that uses it "
                "or pick another port with --port"
            ) from None


def default_secret_path(environ: Mapping[str, str] | None = None) -> Path:
    """Return the file of the browser-state secret: $XDG_CACHE_HOME/mrm/browser_state_secret, else ~/.cache/mrm/."""
    environ = os.environ if environ is None else environ
    cache_home = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "mrm" / "browser_state_secret"


def browser_state_secret(environ: Mapping[str, str] | None = None, path: Path | None = None) -> str:
    """Return the key that encrypts the labels stored in the browser.

    `MRM_BROWSER_STATE_SECRET` wins when set. Otherwise the key is read from
    `path` (default `default_secret_path()`), or created there with mode 0600 on
    the first start, so that stored labels stay readable after a restart. The
    file is written under a temporary name and linked into place, so two
    processes that start at once end up with the same key.
    """
    environ = os.environ if environ is None else environ
    configured = (environ.get(BROWSER_STATE_SECRET_ENV) or "").strip()
    if configured:
        return configured

    path = default_secret_path(environ) if path is None else Path(path)
    existing = _read_secret(path)
    if existing:
        return existing

    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(temp, path)  # fails when another process created the file first
        except FileExistsError:
            pass
    finally:
        temp.unlink(missing_ok=True)
    secret = _read_secret(path)
    if not secret:
        raise RuntimeConfigError(f"the browser-state secret file {path} is empty; delete it and start again")
    logger.info("created the browser-state secret %s", path)
    return secret


def _read_secret(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as error:
        raise RuntimeConfigError(
            f"cannot read the browser-state secret file {path}: {error}; fix or delete it, "
            f"or set {BROWSER_STATE_SECRET_ENV}"
        ) from None


def apply_offline_environment() -> None:
    """Switch Hugging Face libraries and gradio analytics to offline for this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

    # huggingface_hub reads HF_HUB_OFFLINE at import, which has already happened.
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True


@dataclass
class Runtime:
    """The loaded encoder and MRM head, shared read-only by every session."""

    mode: ModeChoice
    encoder: object  # mrm.encoders.Encoder
    model: MRM
    encoder_id: str
    checkpoint_id: str

    @property
    def in_dim(self) -> int:
        return self.model.in_dim

    @property
    def num_bases(self) -> int:
        return self.model.num_bases

    def init_logits(self) -> list[float]:
        """Return the meta-learned mixture logits as plain floats."""
        return [float(v) for v in self.model.shared_weight.detach().cpu()]

    def encode(self, prompts: list[str], responses: list[str]) -> tuple[Tensor, Tensor | None]:
        """Embed (prompt, response) pairs: CPU float32 `[N, H]` and the encoder's scores `[N]` or None."""
        if self is _RUNTIME:
            return encode_on_device(list(prompts), list(responses))
        return _encode_with(self.encoder, prompts, responses)

    def base_rewards(self, embeddings: Tensor) -> Tensor:
        """Compute base rewards `[N, K]` of CPU embeddings `[N, H]` without gradients."""
        with torch.no_grad():
            return self.model.base_rewards(embeddings)


_RUNTIME: Runtime | None = None


def _gpu_decorator() -> Callable:
    # On ZeroGPU Spaces, `spaces.GPU` attaches a GPU for the call's duration.
    try:
        import spaces
    except ImportError:
        return lambda function: function
    return spaces.GPU


@_gpu_decorator()
def encode_on_device(prompts: list[str], responses: list[str]) -> tuple[Tensor, Tensor | None]:
    """Run the active encoder on plain strings and return CPU tensors.

    This is the only function that touches the accelerator, so it alone is
    decorated with `spaces.GPU` when the `spaces` package is installed.
    """
    if _RUNTIME is None:
        raise RuntimeError("no runtime loaded; call mrm.runtime.load_runtime first")
    return _encode_with(_RUNTIME.encoder, prompts, responses)


def _encode_with(encoder, prompts: list[str], responses: list[str]) -> tuple[Tensor, Tensor | None]:
    batch = encoder.encode(list(prompts), list(responses))
    embeddings = batch.embeddings.detach().to("cpu", torch.float32)
    scores = None if batch.scores is None else batch.scores.detach().to("cpu", torch.float32)
    return embeddings, scores


def check_widths(encoder_id: str, encoder_width: int, checkpoint_id: str, checkpoint_width: int) -> None:
    """Raise `RuntimeConfigError` when the encoder's width differs from the checkpoint's `in_dim`."""
    if encoder_width == checkpoint_width:
        return
    raise RuntimeConfigError(
        f"encoder {encoder_id!r} produces {encoder_width}-dim embeddings but checkpoint {checkpoint_id!r} "
        f"expects in_dim={checkpoint_width}. Use a checkpoint trained on this encoder's embeddings "
        f"(--checkpoint), or the encoder the checkpoint was trained with (--encoder)."
    )


def load_checkpoint_for(mode: ModeChoice) -> MRM:
    """Load the MRM head named by `mode`: a local path, else a Hub repo id."""
    path = Path(mode.checkpoint)
    if path.exists():
        return load_mrm(path, device="cpu")
    if mode.checkpoint == DEMO_CHECKPOINT:
        raise RuntimeConfigError(
            f"the demo checkpoint is missing at {path}; build it with `python -m mrm demo build` "
            "or pass another one with --checkpoint"
        )
    from mrm.hub import load_checkpoint

    return load_checkpoint(mode.checkpoint, device="cpu")


def load_runtime(mode: ModeChoice) -> Runtime:
    """Load the encoder and checkpoint of `mode`, check that they fit, and make them active."""
    global _RUNTIME
    from mrm.encoders import load_encoder

    if mode.offline:
        apply_offline_environment()
    logger.info("loading checkpoint %s", mode.checkpoint)
    model = load_checkpoint_for(mode).eval()
    logger.info("loading encoder %s on %s", mode.encoder, mode.device)
    encoder = load_encoder(mode.encoder, device=mode.device)
    check_widths(encoder.encoder_id, encoder.hidden_size, mode.checkpoint, model.in_dim)

    _RUNTIME = Runtime(mode=mode, encoder=encoder, model=model, encoder_id=encoder.encoder_id,
                       checkpoint_id=_display_checkpoint_id(mode.checkpoint))
    return _RUNTIME


def _display_checkpoint_id(checkpoint: str) -> str:
    # Local paths are shown relative to the repository when they lie inside it.
    path = Path(checkpoint)
    if not path.exists():
        return checkpoint
    root = Path(__file__).resolve().parents[1]
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)
