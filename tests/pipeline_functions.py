"""Functions that tests register with ``llmsup serve --function NAME=pipeline_functions:NAME`` (function steps of
pipelines run them on engines of a ``backend=python`` pool): the IO and CPU steps around model steps."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def fetch(path: str) -> str:
    """A document's text (the IO step): the file at ``path``."""
    return Path(path).read_text()


def split(text: str) -> list[str]:
    """Sentences, as a JSON list a map step reads."""
    return [s.strip() for s in text.split(".") if s.strip()]


def count(items: list[str]) -> dict[str, Any]:
    """A JSON object: how many items and their words."""
    return {"items": len(items), "words": sum(len(str(i).split()) for i in items)}


def spin(_: Any) -> str:
    """A runaway function: a busy loop no deadline of its own ends (only the engine's interrupt does)."""
    end = time.monotonic() + 3600
    n = 0
    while time.monotonic() < end:
        n += 1
    return str(n)


def fail(_: Any) -> str:
    raise ValueError("this function always fails")
