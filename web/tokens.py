"""What the front end knows of the served model: context length, limits, the backend's unsupported request
features, and its tokenizer.

The tokenizer is loaded in the web process (from the model directory or hub id the engines publish in
``describe()``), not asked of an engine: a batched engine runs one long-lived serving task, so a tokenize call
sent to it would wait behind that task; and vLLM's own API server tokenizes in its front-end process too. It
counts prompt tokens (a prompt over the context is a 400 before any job is made), fills in ``max_tokens``
(the rest of the context), and serves ``/tokenize`` and ``/detokenize``. Loaded once, lazily, in a thread.
The sim backend's "tokens" are the prompt's words: it has a counter, no vocabulary.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmsup.supervisor.port import ControlPlane

log = logging.getLogger("llmsup.web")


class NoVocabulary(Exception):
    """This backend's tokens are not ids of a vocabulary (the sim backend), or no tokenizer could be loaded."""


class Tokenizer(Protocol):
    def count(self, text: str, add_special_tokens: bool = True) -> int: ...

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_strs(self, ids: list[int]) -> list[str]: ...


class HFTokenizer:
    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.vocab_size = len(tokenizer)

    def count(self, text: str, add_special_tokens: bool = True) -> int:
        return len(self.encode(text, add_special_tokens))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tok(text, add_special_tokens=add_special_tokens).input_ids)

    def decode(self, ids: list[int]) -> str:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of the vocabulary (size {self.vocab_size})")
        return str(self.tok.decode(ids))

    def token_strs(self, ids: list[int]) -> list[str]:
        return [str(t) for t in self.tok.convert_ids_to_tokens(ids)]

    def info(self) -> dict[str, Any]:
        """The tokenizer's configuration, as vLLM's ``/tokenizer_info`` shows it (JSON-safe values only)."""
        out: dict[str, Any] = {}
        for key, value in dict(getattr(self.tok, "init_kwargs", {}) or {}).items():
            if key.endswith("_file") or key == "name_or_path":  # server paths: nobody's business
                continue
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                value = str(value)
            out[str(key)] = value
        out["tokenizer_class"] = type(self.tok).__name__
        template = getattr(self.tok, "chat_template", None)
        if isinstance(template, str):
            out["chat_template"] = template
        return out


class WordCounter:
    """The sim backend's tokens: the prompt's words, directives left out."""

    def count(self, text: str, add_special_tokens: bool = True) -> int:
        from llmsup.engines.sim import prompt_words

        return len(prompt_words(text))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise NoVocabulary("the sim backend's tokens are words, not ids of a vocabulary")

    def decode(self, ids: list[int]) -> str:
        raise NoVocabulary("the sim backend's tokens are words, not ids of a vocabulary")

    def token_strs(self, ids: list[int]) -> list[str]:
        raise NoVocabulary("the sim backend's tokens are words, not ids of a vocabulary")


@dataclass(frozen=True)
class ServedModel:
    backend: str
    path: str
    max_model_len: int | None = None
    max_logprobs: int = 20
    unsupported: dict[str, str] = field(default_factory=dict)
    vllm_version: str | None = None  # the engines' vLLM, when they run one
    multimodal: bool = False  # the model takes images (a vision-language model under vLLM)
    pooling: dict[str, Any] = field(default_factory=dict)  # vLLM: runner, supported_tasks, the pooler's facts

    @property
    def tasks(self) -> list[str] | None:
        """The tasks the model runs (vLLM's supported tasks; None: not known, e.g. another backend)."""
        tasks = self.pooling.get("supported_tasks")
        return [str(t) for t in tasks] if isinstance(tasks, list) else None

    @property
    def pooling_only(self) -> bool:
        """A pooling model (vLLM's pooling runner): it generates no text."""
        return self.pooling.get("runner") == "pooling"


POOLING_FACTS = ("runner", "supported_tasks", "pooling_task", "embedding_size", "matryoshka", "matryoshka_dimensions",
                 "num_labels", "labels")


def served_model(sup: ControlPlane, pool: str | None = None) -> ServedModel | None:
    """The model as the first engine (of ``pool``, if given) that reported its backend describes it (None before
    any such engine is up)."""
    for info in sup.model_facts():
        if info.get("backend") and (pool is None or info.get("pool", pool) == pool):
            return ServedModel(
                backend=str(info["backend"]), path=str(info.get("model") or ""),
                max_model_len=int(info["max_model_len"]) if info.get("max_model_len") else None,
                max_logprobs=int(info.get("max_logprobs") or 20),
                unsupported=dict(info.get("unsupported") or {}),
                vllm_version=str(info["vllm_version"]) if info.get("vllm_version") else None,
                multimodal=bool(info.get("multimodal")),
                pooling={key: info[key] for key in POOLING_FACTS if key in info},
            )
    return None


_CACHE: dict[str, Tokenizer | None] = {}
_LOCK = asyncio.Lock()


def _load(path: str) -> Tokenizer:
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=os.path.isdir(path)))


async def tokenizer_for(model: ServedModel | None) -> Tokenizer | None:
    """The served model's tokenizer (loaded once), a word counter for the sim backend, None if unavailable."""
    if model is None:
        return None
    if model.backend == "sim":
        return WordCounter()
    if not model.path:
        return None
    if model.path in _CACHE:
        return _CACHE[model.path]
    async with _LOCK:
        if model.path not in _CACHE:
            try:
                _CACHE[model.path] = await asyncio.to_thread(_load, model.path)
            except (ImportError, OSError, ValueError) as exc:  # not reachable from here: engines still check
                log.warning("no tokenizer for %s in the web process (%s: %s): prompt lengths are checked by the "
                            "engines only", model.path, type(exc).__name__, exc)
                _CACHE[model.path] = None
    return _CACHE[model.path]


async def warm(sup: ControlPlane, poll_s: float = 0.5) -> None:
    """Load the served model's tokenizer as soon as an engine reports its model (so the first request does not
    wait for it); runs until then, as a background task of the app."""
    while True:
        model = served_model(sup)
        if model is not None:
            await tokenizer_for(model)
            return
        await asyncio.sleep(poll_s)
