"""Logging of ``llmsup serve``: one handler on stderr, text or JSON lines, for llmsup and uvicorn alike."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from llmsup.engines.logformat import formatter


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to the ``sys.stderr`` of the moment (not the one at set-up: it may be replaced, e.g. in tests)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


_installed: logging.Handler | None = None


def configure(level: str, kind: str) -> logging.Handler:
    """Route every log record (uvicorn's too: it is started with ``log_config=None``) to one stderr handler;
    configured again, it replaces its own handler (others', e.g. a test runner's, stay)."""
    global _installed
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    handler = StderrHandler()
    handler.setFormatter(formatter(kind))
    root.addHandler(handler)
    root.setLevel(level.upper())
    _installed = handler
    return handler
