"""What the front end knows of the served model: context length, limits, the backend's unsupported request
features, and its tokenizer.

The facts are the pool's configured model's (``supervisor/core/model_facts.py``): the configuration first, then
what the pool's engines that serve that model report, never whichever engine registered first. The tokenizer is
loaded in the web process (from the model directory or hub id configured, or that the supervisor's own engines
publish in ``describe()``), not asked of an engine: a batched engine runs one long-lived serving task, so a tokenize
call sent to it would wait behind that task; and vLLM's own API server tokenizes in its front-end process too. It
counts prompt tokens (a prompt over the context is a 400 before any job is made), fills in ``max_tokens`` (the rest
of the context), and serves ``/tokenize`` and ``/detokenize``. Loaded once, lazily, in a thread. The sim backend's
"tokens" are the prompt's words: it has a counter, no vocabulary.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmsup.supervisor.core import model_facts
from llmsup.supervisor.port import ControlPlane
from llmsup.supervisor.settings import Settings

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
    max_images: int = 0  # the most images a prompt may carry (vLLM's limit_mm_per_prompt)
    image_placeholders: tuple[str | None, ...] = ()  # the model's placeholder text for the 1st, 2nd... image
    sampling_defaults: dict[str, float] = field(default_factory=dict)  # the model's generation_config.json
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


def pool_for(sup: ControlPlane, model: str | None) -> str:
    """The pool a request's ``model`` names (a served name or alias; a LoRA adapter or none: the first pool)."""
    pools = sup.served_pools()
    return pools.get(model or "") or next(iter(pools.values()))


def trusted_facts(sup: ControlPlane, pool: str | None = None) -> list[dict[str, Any]]:
    """What the pool's engines that serve its configured model reported, the supervisor's own host's first."""
    return [info for info in sup.model_facts(pool) if info.get("backend")]


def pool_settings(sup: ControlPlane, pool: str | None = None) -> Settings:
    """The settings the pool runs with (the server's, with the pool's own over them)."""
    return model_facts.pool_of(sup.settings, pool).settings


def _logprob_limit(facts: list[dict[str, Any]]) -> int:
    """The tightest limit any of them reports (-1: unlimited)."""
    limits = [int(info.get("max_logprobs") or 20) for info in facts]
    bounded = [n for n in limits if n != -1]
    return min(bounded) if bounded else -1


def served_model(sup: ControlPlane, pool: str | None = None) -> ServedModel | None:
    """The pool's model (None: the first pool's; None before one of its engines is up): its path, context length and
    chat template as configured, else as reported; the limits the tightest reported. The path a tokenizer is loaded
    from is the configured model, or one the supervisor's own engines report (never another host's)."""
    facts = trusted_facts(sup, pool)
    if not facts:
        return None
    configured = pool_settings(sup, pool)
    first = facts[0]
    path = configured.model or (str(first.get("model") or "") if first.get("local") else "")
    lengths = [int(info["max_model_len"]) for info in facts if info.get("max_model_len")]
    return ServedModel(
        backend=str(first["backend"]), path=path,
        max_model_len=configured.max_model_len or (min(lengths) if lengths else None),
        max_logprobs=_logprob_limit(facts),
        unsupported=dict(first.get("unsupported") or {}),
        vllm_version=str(first["vllm_version"]) if first.get("vllm_version") else None,
        multimodal=bool(first.get("multimodal")),
        max_images=int(first.get("max_images") or 0),
        image_placeholders=tuple(first.get("image_placeholders") or ()),
        sampling_defaults=dict(first.get("sampling_defaults") or {}),
        pooling={key: first[key] for key in POOLING_FACTS if key in first},
    )


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
