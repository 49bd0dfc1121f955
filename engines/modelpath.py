"""Which model an engine loads: the one the config names, else the tiny local model."""

from __future__ import annotations

import logging
import os
from typing import Any

from llmsup.engines.tinymodel import ensure_tiny_model, is_tiny_model

log = logging.getLogger("llmsup.engine")


def resolve_model(config: dict[str, Any]) -> tuple[str, bool]:
    """Return (path or hub id, is_local_dir). Builds the tiny model when none is named."""
    model = config.get("model")
    if not model:
        run_dir = config.get("run_dir") or os.path.join(os.getcwd(), ".llmsup")
        model = ensure_tiny_model(os.path.join(run_dir, "models", "tiny-llama"))
    check_model_path(model)
    local = os.path.isdir(model)
    if local and is_tiny_model(model):
        log.warning("model %s is the tiny local model: RANDOM weights, its text is random", model)
    return (os.path.abspath(model) if local else model), local


def looks_like_path(model: str) -> bool:
    """A filesystem path, not a Hugging Face id (``org/name``): absolute, or starting with ``.`` or ``~``."""
    return os.path.isabs(model) or model.startswith((".", "~"))


def check_model_path(model: str | None) -> None:
    """``FileNotFoundError`` for a model named by a path where no model directory is: said at once, before any
    import or download (a Hugging Face id is left to the download and the backend)."""
    if model and looks_like_path(model) and not os.path.isdir(os.path.expanduser(model)):
        raise FileNotFoundError(f"model directory {model} does not exist" if not os.path.exists(model)
                                else f"model {model} is not a directory (a model is a folder with config.json)")
