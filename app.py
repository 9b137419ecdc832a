"""Entry point: build the MRM Gradio app and serve it (`python app.py --help` lists the flags)."""

import os
import sys

# Set before gradio is imported: the app never sends usage analytics.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from mrm.ui.app import run_app

if __name__ == "__main__":
    sys.exit(run_app())
