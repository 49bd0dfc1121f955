"""A model's own sampling defaults, as vLLM reads them with ``generation_config="auto"``: the sampling values its
``generation_config.json`` sets (those that differ from transformers' own defaults). The OpenAI routes fill a
request's unset sampling fields from them, else vLLM's neutral defaults (temperature 1.0, top_p 1.0): a request is
greedy only when it asks (temperature 0)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("llmsup.engine")

# vLLM's list (ModelConfig.get_diff_sampling_param), less max_new_tokens (max_tokens has llmsup's own default)
SAMPLING_KEYS = ("repetition_penalty", "presence_penalty", "frequency_penalty", "temperature", "top_k", "top_p",
                 "min_p")


def pick(config: dict[str, Any]) -> dict[str, float]:
    """The sampling values of a generation config's non-default entries."""
    return {key: float(config[key]) if key != "top_k" else int(config[key])
            for key in SAMPLING_KEYS if isinstance(config.get(key), (int, float)) and not isinstance(config[key], bool)}


def from_model_dir(path: str) -> dict[str, float]:
    """The sampling defaults of a local model directory's ``generation_config.json`` ({} when it has none)."""
    if not path:
        return {}
    try:
        from transformers import GenerationConfig

        config = GenerationConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, ImportError):  # no generation_config.json (or no transformers): none
        return {}
    return pick(config.to_diff_dict())


def from_vllm(llm: Any) -> dict[str, float]:
    """What vLLM itself takes as the model's defaults (its ``generation_config`` setting applied)."""
    try:
        return pick(llm.llm_engine.model_config.get_diff_sampling_param())
    except AttributeError:  # a vLLM without that method: read the file as it would
        return from_model_dir(str(getattr(llm.llm_engine.model_config, "model", "")))
