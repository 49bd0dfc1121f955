"""Which backend ``--backend auto`` means on this machine."""

from __future__ import annotations

import importlib.util
import logging

from llmsup.engines import placement

log = logging.getLogger("llmsup.backends")


def pick_backend() -> str:
    """vLLM where it is installed and a GPU is present, else transformers (CPU), else sim."""
    has = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731
    if has("vllm") and placement.detect_gpu_count() > 0:
        return "vllm"
    if has("transformers") and has("torch"):
        return "transformers"
    log.warning("neither vLLM (with a GPU) nor transformers is installed: using the simulated backend")
    return "sim"
