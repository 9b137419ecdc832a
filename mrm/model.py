"""The MRM reward head and its checkpoint formats.

A reward is a softmax-weighted mix of K base rewards. The base rewards come
from a stack of linear layers over a frozen reward-model embedding scaled by
0.01; the K mixture logits are the only user-specific parameters.

Two checkpoint formats load through `load_mrm`:

- the published format: a `torch.save` state dict (optionally wrapped as
  `{"state_dict": ...}` or `{"model": ...}`), architecture read off the shapes;
- this project's format: a folder (or Hub repo) with `model.safetensors` and
  `config.json`, as written by `save_mrm` / `PyTorchModelHubMixin`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

from mrm.fileio import set_default_permissions

logger = logging.getLogger(__name__)

INPUT_SCALE = 0.01
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(weight|bias)$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as an MRM head."""


class MRM(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="mrm",
    tags=["reward-model", "personalization", "meta-learning"],
    repo_url="https://huggingface.co/collections/ModalityDance/mrm",
):
    """Personalised reward head: K base rewards mixed by softmax(mixture logits).

    Args:
        in_dim: width of the reward-model embedding (4096 for Llama-3.1-8B models).
        hidden_layers: output size of each linear layer; the last one is K, the
            number of base rewards. The published checkpoints use `[2]`.
        use_bias: whether the linear layers have a bias.
    """

    def __init__(self, in_dim: int = 4096, hidden_layers: Sequence[int] = (2,), use_bias: bool = False):
        super().__init__()
        hidden_layers = [int(size) for size in hidden_layers]
        if in_dim < 1 or not hidden_layers or min(hidden_layers) < 1:
            raise ValueError(
                f"invalid MRM shape in_dim={in_dim}, hidden_layers={hidden_layers}: "
                "all sizes must be positive and hidden_layers must name at least one layer"
            )
        sizes = [in_dim, *hidden_layers]

        # The names `layers` and `shared_weight` are fixed by the published
        # checkpoints' state-dict keys; renaming them breaks loading.
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out, bias=use_bias) for n_in, n_out in zip(sizes[:-1], sizes[1:])
        )
        self.shared_weight = nn.Parameter(torch.randn(hidden_layers[-1]))

    @property
    def in_dim(self) -> int:
        return self.layers[0].in_features

    @property
    def num_bases(self) -> int:
        """K, the number of base reward functions."""
        return self.shared_weight.numel()

    @property
    def hidden_layers(self) -> list[int]:
        return [layer.out_features for layer in self.layers]

    @property
    def use_bias(self) -> bool:
        return self.layers[0].bias is not None

    def config(self) -> dict:
        return {"in_dim": self.in_dim, "hidden_layers": self.hidden_layers, "use_bias": self.use_bias}

    def base_rewards(self, embeddings: Tensor) -> Tensor:
        """Map embeddings `[..., in_dim]` to base rewards `[..., K]` (fp32 compute)."""
        # The 0.01 input scale is applied after the first matmul (W(0.01x) = 0.01(Wx)),
        # so no scaled copy of the wide input is made.
        first = self.layers[0]
        hidden = nn.functional.linear(embeddings.to(self.shared_weight.dtype), first.weight) * INPUT_SCALE
        if first.bias is not None:
            hidden = hidden + first.bias
        for layer in self.layers[1:]:  # no activation between layers, as published
            hidden = layer(hidden)
        return hidden

    def base_reward_margins(self, differences: Tensor) -> Tensor:
        """Base-reward margins `[..., K]` from embedding differences `chosen - rejected` `[..., in_dim]`.

        The layer stack is affine with no activation, so `base(c) - base(r)` equals
        the stack's linear part applied to `c - r`: the biases cancel. This halves
        the work of meta-training, which only ever needs margins.
        """
        hidden = nn.functional.linear(differences.to(self.shared_weight.dtype), self.layers[0].weight) * INPUT_SCALE
        for layer in self.layers[1:]:
            hidden = nn.functional.linear(hidden, layer.weight)
        return hidden

    def forward(self, embeddings: Tensor, mixture_logits: Tensor | None = None) -> Tensor:
        """Reward of each embedding, `[...]`, with the shared or the given logits."""
        logits = self.shared_weight if mixture_logits is None else mixture_logits
        return mix_rewards(self.base_rewards(embeddings), logits)

    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_model

        save_model(self, str(Path(save_directory) / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, force_download: bool = False, token=None,
                        cache_dir=None, local_files_only: bool = False, revision: str | None = None,
                        map_location: str = "cpu", **unused) -> MRM:
        """Load from a local file or folder, or a Hub repo id (`org/name` or `org/name@revision`).

        Overrides the mixin's version, which requires a `config.json` that the
        published `.pt` repos do not have; every load goes through `load_mrm`.
        """
        from mrm.hub import resolve_checkpoint

        path = resolve_checkpoint(str(pretrained_model_name_or_path), revision=revision, cache_dir=cache_dir, token=token,
                                  force_download=force_download, local_files_only=local_files_only)
        return load_mrm(path, device=map_location)


def mix_rewards(base_rewards: Tensor, mixture_logits: Tensor) -> Tensor:
    """Mix base rewards `[..., K]` with softmax(mixture_logits `[K]` or broadcastable)."""
    weights = torch.softmax(mixture_logits, dim=-1)
    return (base_rewards * weights).sum(dim=-1)


# ----------------------------------------------------------------------------- loading


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, Tensor]:
    """Return the state dict inside a loaded checkpoint object.

    Accepts a plain state dict or one wrapped as `{"state_dict": ...}` or `{"model": ...}`.
    """
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{source} is not a state dict of tensors (found {type(obj).__name__}); "
            "expected keys like 'layers.0.weight' and 'shared_weight'"
        )
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def infer_config(state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> dict:
    """Read `in_dim`, `hidden_layers` and `use_bias` off the weight shapes."""
    weights = {}
    has_bias = set()
    for key, value in state_dict.items():
        match = _LAYER_KEY.match(key)
        if match and match.group(2) == "weight":
            weights[int(match.group(1))] = value
        elif match:
            has_bias.add(int(match.group(1)))
    if not weights or sorted(weights) != list(range(len(weights))):
        raise CheckpointError(
            f"{source} has no consecutive 'layers.{{i}}.weight' keys (found keys: {sorted(state_dict)[:8]}); "
            "is this an MRM checkpoint?"
        )
    for index, weight in weights.items():
        if weight.ndim != 2:
            raise CheckpointError(f"{source}: 'layers.{index}.weight' has shape {tuple(weight.shape)}, expected 2-D")
    return {
        "in_dim": int(weights[0].shape[1]),
        "hidden_layers": [int(weights[i].shape[0]) for i in range(len(weights))],
        "use_bias": bool(has_bias),
    }


def load_state_dict_strict(model: MRM, state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> MRM:
    """Copy `state_dict` into `model`, raising one error that names every bad key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or misshaped:
        problems = []
        if missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if misshaped:
            problems.append(f"mis-shaped keys: {'; '.join(misshaped)}")
        raise CheckpointError(f"{source} does not match the MRM architecture {model.config()}: " + " | ".join(problems))
    model.load_state_dict({k: v.to(torch.float32) for k, v in state_dict.items()}, strict=True)
    return model


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from a `.pt`/`.bin` pickle (weights only) or a `.safetensors` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return load_safetensors(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or non-weight pickles
        raise CheckpointError(f"could not read {path} as a weights-only torch checkpoint: {error}") from error
    return unwrap_state_dict(obj, source=str(path))


def load_mrm(path: str | os.PathLike, device: str | torch.device = "cpu") -> MRM:
    """Load an MRM head from a local checkpoint file or folder.

    A folder must hold `model.safetensors` (with `config.json`) or a single
    `.pt`/`.bin`/`.safetensors` file. Hub repo ids are resolved by
    `mrm.hub.load_checkpoint`, which downloads and then calls this.
    """
    path = Path(path)
    if path.is_dir():
        path = find_checkpoint_file([p.name for p in path.iterdir() if p.is_file()], str(path), root=path)
    state_dict = read_state_dict(path)
    config = infer_config(state_dict, source=str(path))

    # A config.json next to the weights must agree with the shapes.
    config_path = path.parent / CONFIG_NAME
    if config_path.is_file():
        try:
            declared = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{config_path} is not valid JSON: {error}") from error
        for key in ("in_dim", "hidden_layers", "use_bias"):
            if key in declared and declared[key] != config[key]:
                raise CheckpointError(
                    f"{config_path} declares {key}={declared[key]!r} but the weights in {path.name} have {key}={config[key]!r}; "
                    "fix or delete the config.json"
                )

    model = MRM(**config)
    load_state_dict_strict(model, state_dict, source=str(path))
    return model.to(device).eval()


def find_checkpoint_file(file_names: Sequence[str], where: str, root: Path | None = None) -> Path:
    """Pick the checkpoint file among `file_names` (a folder listing or a Hub repo's files).

    Preference: `model.safetensors`, then a single other `.safetensors`, then a
    single `.pt`/`.pth`/`.bin` file. Raises when none or several candidates exist.
    """
    names = [n for n in file_names if not Path(n).name.startswith(".")]
    if WEIGHTS_NAME in names:
        choice = WEIGHTS_NAME
    else:
        candidates = [n for n in names if n.endswith(".safetensors")]
        if not candidates:
            candidates = [n for n in names if n.endswith((".pt", ".pth", ".bin"))]
        if len(candidates) != 1:
            found = ", ".join(sorted(names)) or "no files"
            reason = "no checkpoint file" if not candidates else f"several checkpoint files ({', '.join(candidates)})"
            raise CheckpointError(
                f"{where} contains {reason}; found: {found}. Pass the path of the checkpoint file itself."
            )
        choice = candidates[0]
    return (root / choice) if root is not None else Path(choice)


def save_mrm(model: MRM, directory: str | os.PathLike, extra_config: Mapping | None = None) -> Path:
    """Save `model` as `model.safetensors` + `config.json` in `directory`, atomically per file.

    `extra_config` (for example encoder id and training settings) is stored in
    `config.json` beside the architecture; loading ignores keys it does not know.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {**(extra_config or {}), **model.config()}
    with tempfile.TemporaryDirectory(dir=directory, prefix=".save-") as tmp:
        model.save_pretrained(tmp, config=config)
        # The mixin's generic README.md card stays behind: `mrm.hub.push_checkpoint` writes a real one.
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            set_default_permissions(Path(tmp) / name)
            os.replace(Path(tmp) / name, directory / name)
    return directory
