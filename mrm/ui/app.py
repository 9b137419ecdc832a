"""The Gradio app: a header that names the running encoder and checkpoint, and two tabs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from mrm.runtime import (
    Runtime,
    RuntimeConfigError,
    browser_state_secret,
    check_device,
    check_port_free,
    choose_mode,
    load_runtime,
    parse_app_args,
)
from mrm.ui.personalize import SHORTCUTS_JS, build_personalize_tab
from mrm.ui.train_tab import build_train_tab

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
CSS_PATH = ASSETS_DIR / "style.css"

# System font stacks only: a GoogleFont here would make every page load fetch from Google.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)


def header_markdown(runtime: Runtime) -> str:
    """Return the page header: which encoder and checkpoint run, and why."""
    mode = runtime.mode
    return (
        "## Meta Reward Modeling: personalise a reward model with a few labels\n"
        f"**Encoder:** `{runtime.encoder_id}` · **Checkpoint:** `{runtime.checkpoint_id}` "
        f"(K = {runtime.num_bases} base rewards, in_dim = {runtime.in_dim}) · **Device:** `{mode.device}`\n\n"
        f"**Mode:** {mode.reason}"
    )


def build_app(runtime: Runtime, browser_secret: str | None = None) -> gr.Blocks:
    """Build the whole app for a loaded `runtime`; theme, CSS and JS go to `launch` (see `launch_options`).

    `browser_secret` encrypts what the page stores in the browser; None gives a
    random key per process, so stored labels do not survive a restart.
    """
    with gr.Blocks(title="MRM: personalised reward modeling", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as demo:
        gr.Markdown(header_markdown(runtime), elem_id="mrm-header")
        with gr.Tabs():
            with gr.Tab("Personalize", id="personalize"):
                build_personalize_tab(runtime, demo, browser_secret=browser_secret)
            with gr.Tab("Train & evaluate", id="train"):
                build_train_tab(runtime, demo)
    return demo


def launch_options() -> dict:
    """Keyword arguments for `Blocks.launch` that set the look and keep the page free of external requests."""
    return {"theme": THEME, "css_paths": [CSS_PATH], "js": SHORTCUTS_JS, "share": False,
            "footer_links": ["api", "settings"], "max_file_size": "20mb", "show_error": True}


def run_app(argv: Sequence[str] | None = None) -> int:
    """Parse flags, pick the mode, load encoder and checkpoint, and serve the app until stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio polls its own server at start
    config = parse_app_args(argv)
    mode = choose_mode(config)
    logger.info("encoder %s, checkpoint %s, device %s (%s)", mode.encoder, mode.checkpoint, mode.device, mode.reason)

    # Every start-up failure of the chosen encoder or checkpoint ends here with its message.
    from mrm.encoder_base import EncoderLoadError
    from mrm.hub import HubError
    from mrm.model import CheckpointError

    try:
        check_device(mode.device)
        check_port_free(config.host, config.port)
        secret = browser_state_secret()
        runtime = load_runtime(mode)
    except (RuntimeConfigError, CheckpointError, HubError, EncoderLoadError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    demo = build_app(runtime, browser_secret=secret)
    demo.queue(default_concurrency_limit=2)
    try:
        demo.launch(server_name=config.host, server_port=config.port, **launch_options())
    except OSError as error:
        # Another program can take the port between the check above and the launch.
        print(f"error: cannot serve the app: {error}; pick another port with --port", file=sys.stderr)
        return 2
    return 0
