"""Gradio user interface: component layout and event wiring over `mrm.session` and the train tab."""
