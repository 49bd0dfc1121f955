"""Functions for the function steps of pipelines, as examples to register at start:
``llmsup serve --pool name=io,backend=python --function fetch=llmsup.engines.example_functions:fetch
--function split=llmsup.engines.example_functions:split`` (``notebooks/03_pipelines.ipynb`` runs them).

Each takes the step's input (its prompt, read as JSON when it parses) and returns the step's output (text, or a
JSON value: a list feeds a map step)."""

from __future__ import annotations

import re
from pathlib import Path


def fetch(path: str) -> str:
    """The text of a document on the engine's host (an IO step)."""
    return Path(path).read_text()


def split(text: str) -> list[str]:
    """The document's sentences, as a JSON list (a CPU step)."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
