"""Fixtures shared by every test module."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def restore_root_logging():
    """Undo the root-logger set-up that an in-process CLI call leaves behind.

    `python -m mrm train|evaluate` configures the root logger with a handler on
    the current stderr (under pytest, a capture stream that is closed after the
    test) and a file handler in the run folder. Later tests would write to the
    closed stream and print "--- Logging error ---".
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
