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
    local = os.path.isdir(model)
    if local and is_tiny_model(model):
        log.warning("model %s is the tiny local model: RANDOM weights, its text is random", model)
    return (os.path.abspath(model) if local else model), local
