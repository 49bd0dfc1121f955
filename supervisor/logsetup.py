"""Logging of ``llmsup serve``: one handler on stderr, text or JSON lines, for llmsup and uvicorn alike."""

from __future__ import annotations

import logging
import sys

from llmsup.engines.logformat import formatter


def configure(level: str, kind: str) -> logging.Handler:
    """Route every log record (uvicorn's too: it is started with ``log_config=None``) to one stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(kind))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
