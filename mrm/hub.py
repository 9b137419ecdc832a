"""Resolve, download and push MRM checkpoints on the Hugging Face Hub.

`resolve_checkpoint` turns a local path or a Hub repo id (`org/name` or
`org/name@revision`) into a local checkpoint path, through the standard
`huggingface_hub` cache, so offline mode (`HF_HUB_OFFLINE=1`), pinned
revisions and tokens behave as they do for any Hub model. Every failure of
the Hub or of the cache becomes one `HubError` whose message names the repo,
the revision and the next step to take.

`push_checkpoint` uploads a head as `model.safetensors` + `config.json` with a
model card that records the encoder, the architecture, the training settings
and the evaluation results.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path, PurePosixPath

import httpx2
from huggingface_hub import HfApi, ModelCard, ModelCardData, constants, get_token, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import validate_repo_id

from mrm.fileio import write_text_atomic
from mrm.model import CONFIG_NAME, MRM, CheckpointError, find_checkpoint_file, load_mrm, save_mrm

try:  # get_cached_repo_tree exists in huggingface_hub 2.4, and the fallback covers versions without it
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    get_cached_repo_tree = None
    CachedRepoTreeNotFoundError = LookupError

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "ModalityDance/MRM-Reddit150-V2"
PUBLISHED_CHECKPOINTS = (
    "ModalityDance/MRM-Reddit150-V2",
    "ModalityDance/MRM-Reddit100-V2",
    "ModalityDance/MRM-PRISM-V2",
    "ModalityDance/MRM-PRISM-V1",
)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
CARD_TAGS = ["reward-model", "personalization", "meta-learning", "mrm"]

# Connection-level failures: the Hub was not reached at all.
_NETWORK_ERRORS = (httpx2.TransportError, OfflineModeIsEnabled, ConnectionError, TimeoutError)


class HubError(RuntimeError):
    """Failure of a Hub look-up, download or upload. The message states the next step to take."""


# ----------------------------------------------------------------------------- resolving


def resolve_checkpoint(
    path_or_repo: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> Path:
    """Return a local checkpoint path for a local file, a local folder or a Hub repo id.

    A local file or folder is returned as is (a folder must contain a checkpoint).
    Anything else is read as a Hub repo id, optionally `org/name@revision`.
    The repo's files are listed (from the local cache when offline) and
    `find_checkpoint_file` picks the checkpoint among them. That file is
    downloaded into the Hub cache, together with `config.json` when the repo
    has one. The returned path is the checkpoint file inside the cache's
    snapshot folder.

    `token` defaults to the `HF_TOKEN` environment variable (then to a stored
    `hf auth login` token). Offline mode is on when `local_files_only` is true
    or `HF_HUB_OFFLINE` is set, even if it was set after `huggingface_hub` was
    imported.

    Raises:
        HubError: the repo could not be listed or downloaded. The message gives the reason and the fix.
        CheckpointError: a local folder contains no checkpoint, or several.
    """
    local = Path(path_or_repo).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        find_checkpoint_file([p.name for p in local.iterdir() if p.is_file()], str(local), root=local)
        return local

    text = str(path_or_repo)
    if _looks_like_local_path(text):
        raise HubError(
            f"checkpoint not found: no such file or folder '{text}' ({local.resolve()}). "
            f"Check the path, or pass a Hub repo id of the form 'org/name' such as '{DEFAULT_CHECKPOINT}'."
        )
    repo_id, revision = parse_repo_id(text, revision)
    token = token or os.environ.get("HF_TOKEN") or None
    offline = local_files_only or is_offline()
    target = _Target(repo_id, revision, cache_dir, local)

    if offline and force_download:
        raise HubError(
            f"Cannot force a download of {target}: offline mode is on (HF_HUB_OFFLINE=1 or local_files_only=True). "
            "Unset HF_HUB_OFFLINE and connect to the network, or drop force_download to use the cached files."
        )

    # NOTE: the file names in the published repos are not known here. A repo
    # with more than one .pt/.pth/.bin file (and no .safetensors) is rejected.
    file_names = _list_repo_files(target, token=token, offline=offline)
    try:
        filename = find_checkpoint_file(file_names, f"Hub repo {target}").as_posix()
    except CheckpointError as error:
        raise HubError(
            f"{error} To load one file of this repo, download it with `hf download {repo_id} FILE "
            "--local-dir DIR` and pass the local path DIR/FILE."
        ) from None

    checkpoint_path = Path(_download(target, filename, revision, token, force_download, offline))

    # Fetch config.json from the commit of the weights, so that load_mrm can
    # check the declared architecture against them.
    config_name = (PurePosixPath(filename).parent / CONFIG_NAME).as_posix()
    if config_name in file_names:
        commit = checkpoint_path.parents[len(PurePosixPath(filename).parts) - 1].name
        try:
            _download(target, config_name, commit, token, force_download, offline)
        except HubError as error:
            logger.warning("loading %s without its %s: %s", target, config_name, error)

    logger.info("resolved %s to %s", target, checkpoint_path)
    return checkpoint_path


def load_checkpoint(
    path_or_repo: str | os.PathLike,
    revision: str | None = None,
    device: str = "cpu",
    *,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
    local_files_only: bool = False,
) -> MRM:
    """Load an MRM head from a local path or a Hub repo id (see `resolve_checkpoint`)."""
    path = resolve_checkpoint(
        path_or_repo, revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only
    )
    return load_mrm(path, device=device)


def _looks_like_local_path(text: str) -> bool:
    # MRM checkpoints live in namespaced repos ('org/name'), so a name without a
    # slash, a path-like prefix or a weights suffix is a mistyped local path.
    base = text.split("@", 1)[0]
    return (
        "/" not in base
        or base.startswith(("/", "./", "../", "~"))
        or base.count("/") > 1
        or base.endswith((".pt", ".pth", ".bin", ".safetensors", ".json"))
    )


def parse_repo_id(text: str, revision: str | None = None) -> tuple[str, str | None]:
    """Split `org/name@revision` into a validated repo id and a revision.

    Raises HubError when the text is not a repo id, or when it names a revision
    that disagrees with the `revision` argument.
    """
    repo_id, separator, suffix = text.partition("@")
    if separator and not suffix.strip():
        raise HubError(f"'{text}' ends with '@' but names no revision; write org/name@REVISION, or leave out the '@'.")
    if suffix:
        if revision is not None and revision != suffix:
            raise HubError(
                f"Conflicting revisions for {repo_id}: '{suffix}' in the repo id and '{revision}' as argument. "
                "Pass the revision only once."
            )
        revision = suffix
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(
            f"'{text}' is neither an existing local path ({Path(text).expanduser().resolve()} does not exist) "
            "nor a Hub repo id of the form 'org/name' or 'org/name@revision'. "
            "Check the path, or pass a repo id such as "
            f"'{DEFAULT_CHECKPOINT}'."
        ) from None
    return repo_id, revision or None


def is_offline() -> bool:
    """Return True when Hub offline mode is on in `huggingface_hub` or in the current environment."""
    # Same variables and values as huggingface_hub.constants reads at import time.
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    from_env = value.strip().upper() in {"1", "ON", "YES", "TRUE"}
    return constants.is_offline_mode() or from_env


class _Target:
    """A repo id with its revision and cache folder, as named in messages."""

    def __init__(self, repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None, local_path: Path):
        self.repo_id = repo_id
        self.revision = revision
        self.cache_dir = str(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
        self.local_path = local_path

    def __str__(self) -> str:
        return f"'{self.repo_id}' (revision '{self.revision or constants.DEFAULT_REVISION}')"

    @property
    def download_command(self) -> str:
        revision = f" --revision {self.revision}" if self.revision else ""
        return f"`hf download {self.repo_id}{revision}` (older clients: `huggingface-cli download {self.repo_id}{revision}`)"

    @property
    def local_hint(self) -> str:
        """Return a sentence for inputs that look like a mistyped local path, else an empty string."""
        if self.local_path.suffix not in CHECKPOINT_SUFFIXES:
            return ""
        return f" No local file {self.local_path.resolve()} exists either, so it was read as a Hub repo id."

    @property
    def alternatives(self) -> str:
        return (
            "Alternatively, pass a local checkpoint file or folder instead of the repo id, "
            "or start the offline demo with `python app.py --offline`."
        )


def _list_repo_files(target: _Target, token: str | None, offline: bool) -> list[str]:
    """List the repo's files from the Hub, or from the cache when offline or when the Hub request fails."""
    if offline:
        cached = _list_cached_files(target)
        if cached is None and target.revision and _repo_folder(target).is_dir():
            raise HubError(
                f"Could not load the checkpoint {target}: offline mode is on (HF_HUB_OFFLINE=1 or "
                f"local_files_only=True), and the local Hub cache {target.cache_dir} has the repo but not the "
                f"revision '{target.revision}'. Download that revision while online with {target.download_command}, "
                "or leave out the revision to use the cached 'main'. " + target.alternatives
            )
        if cached is None:
            raise HubError(
                f"Could not load the checkpoint {target}: offline mode is on (HF_HUB_OFFLINE=1 or "
                f"local_files_only=True) and the repo is not in the local Hub cache {target.cache_dir}."
                f"{target.local_hint} "
                f"Download it while online with {target.download_command} and retry, "
                "or unset HF_HUB_OFFLINE to download it now. " + target.alternatives
            )
        return cached

    try:
        info = HfApi(token=token).model_info(target.repo_id, revision=target.revision)
    except (HfHubHTTPError, *_NETWORK_ERRORS) as error:
        logger.debug("listing %s on the Hub failed", target, exc_info=True)

        # Like huggingface_hub itself, fall back to the cache unless the revision is known to be missing.
        cached = None if isinstance(error, RevisionNotFoundError) else _list_cached_files(target)
        if cached is None:
            raise HubError(_failure_message(target, error)) from None
        logger.warning("listing %s on the Hub failed (%s), so the cached copy is used", target, type(error).__name__)
        return cached
    return [sibling.rfilename for sibling in info.siblings or []]


def _repo_folder(target: _Target) -> Path:
    """Return the cache folder `models--org--name` of the repo (it may not exist)."""
    return Path(target.cache_dir) / repo_folder_name(repo_id=target.repo_id, repo_type="model")


def _list_cached_files(target: _Target) -> list[str] | None:
    """List the repo's files at the revision from the local cache, or None when it is not cached."""
    # The listing cached with the commit is complete even when only some files were downloaded.
    if get_cached_repo_tree is not None:
        try:
            tree = get_cached_repo_tree(target.repo_id, revision=target.revision, cache_dir=target.cache_dir)
            return [entry.path for entry in tree]
        except CachedRepoTreeNotFoundError:
            pass

    # Otherwise list what the cached snapshot folder holds.
    try:
        folder = Path(
            snapshot_download(target.repo_id, revision=target.revision, cache_dir=target.cache_dir, local_files_only=True)
        )
    except (LocalEntryNotFoundError, OSError):
        return None
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def _download(target: _Target, filename: str, revision: str | None, token, force_download: bool, offline: bool) -> str:
    """Download one file of the repo into the cache (or find it there) and return its path."""
    try:
        return hf_hub_download(
            target.repo_id,
            filename,
            revision=revision,
            cache_dir=target.cache_dir,
            token=token,
            force_download=force_download,
            local_files_only=offline,
        )
    except (HfHubHTTPError, EntryNotFoundError, ValueError, *_NETWORK_ERRORS) as error:
        logger.debug("downloading %s of %s failed", filename, target, exc_info=True)

        # hf_hub_download wraps the request's error in LocalEntryNotFoundError
        # (or ValueError under force_download) when the cache cannot stand in.
        cause = error
        if isinstance(error, (LocalEntryNotFoundError, ValueError)) and error.__cause__ is not None:
            cause = error.__cause__
        if offline or isinstance(cause, OfflineModeIsEnabled):
            raise HubError(
                f"Could not load '{filename}' of {target}: offline mode is on and the file is not in the local "
                f"Hub cache {target.cache_dir}. Download it while online with {target.download_command} "
                "and retry. " + target.alternatives
            ) from None
        raise HubError(_failure_message(target, cause, filename=filename)) from None


def _failure_message(target: _Target, error: Exception, filename: str | None = None) -> str:
    """Build the message for a failed Hub request, naming the repo, the failure and the fix."""
    what = f"'{filename}' of {target}" if filename else f"the checkpoint {target}"
    status = getattr(getattr(error, "response", None), "status_code", None)
    server_message = getattr(error, "server_message", None) or ""

    if isinstance(error, RevisionNotFoundError):
        return (
            f"Could not load {what}: the repo has no revision '{target.revision}'. "
            "Pass an existing branch, tag or commit hash, or leave the revision out to use 'main'. " + target.alternatives
        )
    if isinstance(error, GatedRepoError):
        return (
            f"Could not load {what}: the repo is gated and this request has no access to it. "
            f"Accept its conditions on {constants.ENDPOINT}/{target.repo_id} while logged in, then set HF_TOKEN "
            "to a read token of that account (or run `hf auth login`). " + target.alternatives
        )
    if status == 401 and "invalid credentials" in server_message.lower():
        return (
            f"Could not load {what}: the Hub rejected the token as invalid. "
            "Set HF_TOKEN to a valid read token (or run `hf auth login`), or unset it for public repos. " + target.alternatives
        )
    if isinstance(error, RepositoryNotFoundError):
        return (
            f"Could not load {what}: the repo was not found on the Hub, or it is private and the request "
            f"was not authorised.{target.local_hint} Check the repo id (published checkpoints: "
            f"{', '.join(PUBLISHED_CHECKPOINTS)}), and for a private repo set HF_TOKEN to a read token with "
            "access to it. " + target.alternatives
        )
    if isinstance(error, EntryNotFoundError):
        return f"Could not load {what}: the file is listed in the repo but was not found on the Hub. " + target.alternatives
    if isinstance(error, HfHubHTTPError):
        return (
            f"Could not load {what}: the Hub answered HTTP {status} and the files are not in the local Hub cache "
            f"{target.cache_dir}. Retry later, or download the repo when the Hub responds with "
            f"{target.download_command}. " + target.alternatives
        )
    if isinstance(error, _NETWORK_ERRORS):
        return (
            f"Could not load {what}: the Hub at {constants.ENDPOINT} could not be reached "
            f"({type(error).__name__}) and the files are not in the local Hub cache {target.cache_dir}. "
            "Check the network connection (and HF_ENDPOINT or proxy settings), or download the repo on a "
            f"machine that is online with {target.download_command} and copy the cache. " + target.alternatives
        )
    return f"Could not load {what}: {type(error).__name__}: {error}. " + target.alternatives


# ----------------------------------------------------------------------------- pushing


def push_checkpoint(
    model: MRM,
    repo_id: str,
    card_info: Mapping,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
) -> str:
    """Upload `model` with a model card to the Hub repo `repo_id` and return the commit URL.

    The repo gets `model.safetensors`, `config.json` (architecture plus the
    encoder id and revision from `card_info`) and a `README.md` rendered by
    `render_model_card`. The repo is created when missing (`private` applies
    only then), and so is the branch `revision` when given. `card_info` is
    described at `render_model_card`; its optional `commit_message` names the
    commit.

    Raises:
        HubError: no token is available or offline mode is on (both checked before
            any request), or the Hub rejected the upload.
    """
    token = token or get_token()
    if not token:
        raise HubError(
            f"Cannot push to '{repo_id}': no Hugging Face token. Set HF_TOKEN to a token with write access "
            f"({constants.ENDPOINT}/settings/tokens), run `hf auth login`, or pass token=..."
        )
    if is_offline():
        raise HubError(f"Cannot push to '{repo_id}': offline mode is on (HF_HUB_OFFLINE=1). Unset it to upload.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(f"Cannot push to '{repo_id}': not a Hub repo id of the form 'org/name'.") from None
    readme = render_model_card(model, {"repo_id": repo_id, **card_info})

    with tempfile.TemporaryDirectory(prefix="mrm-push-") as folder:
        # save_mrm may leave the mixin's generic card in the folder, and this card replaces it.
        save_mrm(model, folder, extra_config=_encoder_config(card_info))
        write_text_atomic(Path(folder) / "README.md", readme)

        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision and revision != constants.DEFAULT_REVISION:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                revision=revision,
                commit_message=card_info.get("commit_message") or "Upload MRM checkpoint",
            )
        except (HfHubHTTPError, *_NETWORK_ERRORS) as error:
            logger.debug("pushing to %s failed", repo_id, exc_info=True)
            raise HubError(_push_failure_message(repo_id, error)) from None

    logger.info("pushed %s to %s", type(model).__name__, commit.commit_url)
    return commit.commit_url


def _encoder_config(card_info: Mapping) -> dict:
    """Return the card fields that config.json records next to the architecture, under the keys demo bundles use."""
    names = {"encoder": "encoder_id", "encoder_revision": "encoder_revision"}
    return {names[key]: card_info[key] for key in names if card_info.get(key) is not None}


def _push_failure_message(repo_id: str, error: Exception) -> str:
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status in (401, 403):
        return (
            f"Cannot push to '{repo_id}': the Hub answered HTTP {status}, so the token has no write access "
            "to this repo or namespace. Use a token with write permission for it (set HF_TOKEN or run "
            "`hf auth login`)."
        )
    if isinstance(error, HfHubHTTPError):
        return f"Cannot push to '{repo_id}': the Hub answered HTTP {status}. Retry later."
    return (
        f"Cannot push to '{repo_id}': the Hub at {constants.ENDPOINT} could not be reached ({type(error).__name__}). "
        "Check the network connection and retry."
    )


# ----------------------------------------------------------------------------- model card

# Training settings that name files or hardware of the training machine; cards leave them out.
LOCAL_SETTINGS = ("embed_pt", "meta_json", "output_path", "device", "overwrite")

_RESULT_ROWS = (
    ("seen", "Seen users (meta-training tasks)"),
    ("unseen", "Unseen users (not used in meta-training)"),
    ("overall", "All users"),
    ("worst10", "Worst 10% of users (their mean)"),
)


def render_model_card(model: MRM, card_info: Mapping) -> str:
    """Render the README.md model card for `model` from `card_info`.

    `card_info` keys, all optional:
        repo_id: the Hub repo, used in the title and the usage snippet.
        title, description: a heading and a paragraph to open the card with.
        encoder, encoder_revision: the reward model whose embeddings the head reads;
            a Hub model id also becomes the card's `base_model`.
        dataset: the training data (a Hub dataset id also becomes `datasets`).
        license: a Hub license id.
        training: the training settings (a mapping or a dataclass such as the training
            config), rendered as a table.
        results: a mapping with user-level accuracies as fractions in [0, 1]
            (`seen`, `unseen`, `overall`, `worst10`, optionally `std` and `init`,
            the same accuracies before adaptation; NaN prints as n/a), and
            optionally `num_seen`, `num_unseen`, `protocol` (`inner_lr`,
            `eval_inner_epochs`), `best_epoch` and `selected_on`. `selected_on`
            is a label such as `"test: ..."`, `"val: ..."` or `"last: ..."`
            whose part before the colon names the selection data.

    Raises:
        ValueError: an accuracy is not a fraction in [0, 1].
    """
    encoder = card_info.get("encoder")
    dataset = card_info.get("dataset")
    card_data = ModelCardData(
        library_name="mrm",
        tags=list(CARD_TAGS),
        base_model=encoder if _is_hub_id(encoder) else None,
        datasets=[dataset] if _is_hub_id(dataset) else None,
        license=card_info.get("license"),
        metrics=["accuracy"],
    )

    repo_id = card_info.get("repo_id")
    title = card_info.get("title") or (f"MRM reward head: {repo_id}" if repo_id else "MRM reward head")
    sections = [f"# {title}"]
    if card_info.get("description"):
        sections.append(str(card_info["description"]))
    sections.append(
        "A Meta Reward Modeling (MRM) head: a personalised reward is a softmax-weighted mix of K base "
        "rewards computed from a frozen reward-model embedding. Only the K mixture logits are "
        "adapted to a user, from a few of that user's labelled preference pairs."
    )
    sections.append(_model_section(model, card_info))
    if card_info.get("training"):
        sections.append("## Training\n\n" + _settings_table(card_info["training"]))
    if card_info.get("results"):
        sections.append(_results_section(card_info["results"]))
    if repo_id:
        sections.append(
            "## Usage\n\n```python\nfrom mrm.hub import load_checkpoint\n\n"
            f'model = load_checkpoint("{repo_id}")\n```\n\n'
            "The head scores embeddings from the encoder named above. Embeddings from another "
            "encoder give meaningless rewards."
        )

    body = "\n\n".join(sections) + "\n"
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}"))


def _model_section(model: MRM, card_info: Mapping) -> str:
    encoder = card_info.get("encoder") or "not recorded"
    revision = card_info.get("encoder_revision")
    rows = [
        ("Encoder (embedding model)", f"`{encoder}`" + (f" at revision `{revision}`" if revision else "")),
        ("Embedding size (in_dim)", str(model.in_dim)),
        ("Base rewards (K)", str(model.num_bases)),
        ("Linear layers (hidden_layers)", str(model.hidden_layers)),
        ("Bias in linear layers", str(model.use_bias).lower()),
    ]
    if card_info.get("dataset"):
        rows.append(("Training data", f"`{card_info['dataset']}`"))
    return "## Model\n\n" + _table(("Field", "Value"), rows)


def _results_section(results: Mapping) -> str:
    init = results.get("init") or {}
    has_init = any(init.get(key) is not None for key, _ in _RESULT_ROWS)
    header = ("Users", "Accuracy after adaptation", "Before adaptation") if has_init else ("Users", "Accuracy")
    rows = []
    for key, label in _RESULT_ROWS:
        if results.get(key) is None and init.get(key) is None:
            continue
        row = (label, _percent(results.get(key), key))
        rows.append((*row, _percent(init.get(key), f"init.{key}")) if has_init else row)

    lines = [
        "## Evaluation",
        (
            "User-level preference accuracy: for each user, the share of that user's test pairs where the "
            "chosen response gets the higher reward after adapting the mixture logits on the user's "
            "training pairs, averaged over users."
        ),
        _table(header, rows),
    ]
    if results.get("std") is not None:
        lines.append(f"Standard deviation of user accuracy: {_percent(results['std'], 'std')}.")
    if results.get("num_seen") is not None and results.get("num_unseen") is not None:
        lines.append(f"Users evaluated: {results['num_seen']} seen and {results['num_unseen']} unseen.")
    protocol = results.get("protocol") or {}
    if protocol.get("eval_inner_epochs") is not None and protocol.get("inner_lr") is not None:
        lines.append(
            f"Adaptation before scoring: {protocol['eval_inner_epochs']} Adam step(s) on the mixture logits "
            f"at inner_lr {protocol['inner_lr']}."
        )
    lines.append(_selection_sentence(results))
    return "\n\n".join(lines)


def _selection_sentence(results: Mapping) -> str:
    selected_on = results.get("selected_on")
    epoch = results.get("best_epoch")
    epoch_text = f"Epoch {epoch}" if epoch is not None else "The reported epoch"
    if selected_on is None:
        return "The card does not record how the reported epoch was selected."

    # Training writes labels such as "val: held-out training pairs of unseen users".
    kind, _, description = str(selected_on).partition(":")
    kind, description = kind.strip(), description.strip()
    if kind == "test":
        return (
            f"{epoch_text} was selected by the best overall test accuracy over all evaluated epochs, "
            "as in the published protocol. The test pairs chose the epoch, so these figures are optimistic."
        )
    if kind == "last":
        return f"{epoch_text} is the final training epoch. No epoch selection took place."
    # The label's own parenthesis (such as "(test pairs untouched)") repeats the sentence's ending.
    description = description.split("(", 1)[0].strip()
    detail = f": {description}" if description else ""
    return f"{epoch_text} was selected on `{kind}` data{detail}, without looking at the test pairs."


def public_settings(settings) -> dict:
    """Return training settings without the entries that only make sense on the machine that trained.

    Dropped: data and output paths, the device, `overwrite`, and a `ckpt`
    that is not a Hub repo id (a local starting checkpoint).
    """
    if is_dataclass(settings):
        settings = asdict(settings)
    return {
        key: value
        for key, value in settings.items()
        if key not in LOCAL_SETTINGS and not (key == "ckpt" and value and not _is_hub_id(value))
    }


def _settings_table(settings) -> str:
    rows = [(f"`{key}`", f"`{value}`") for key, value in public_settings(settings).items()]
    return _table(("Setting", "Value"), rows)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _percent(value, name: str) -> str:
    if value is None or math.isnan(float(value)):  # NaN: no users in that group
        return "n/a"
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"accuracy '{name}' is {value}, not a fraction in [0, 1]. Pass accuracies as fractions (0.653, not 65.3)."
        )
    return f"{100 * value:.1f}%"


def _is_hub_id(value) -> bool:
    """Return True when `value` is a Hub repo id `org/name` and no local path (the demo encoder's name is not)."""
    if not isinstance(value, str) or value.count("/") != 1 or Path(value).expanduser().exists():
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True
