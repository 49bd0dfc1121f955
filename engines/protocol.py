"""The backend protocol: what an engine needs from a model runtime.

A backend is loaded once per engine process (engine-local state), generates
one request at a time through :meth:`Backend.generate`, calling ``on_token``
for every piece of text as it is produced, and is released before the engine
process goes away (so that child processes such as vLLM's EngineCore die with
it).

Interrupts: the watchdog sends SIGINT to the engine process. Python raises
``KeyboardInterrupt`` in the main thread wherever generation is; the engine
task catches it and calls :meth:`Backend.abort` so that the backend drops the
in-flight request and is ready for the next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]
TokenCallback = Callable[[str], None]


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters of one request, backend-neutral."""

    max_tokens: int = 64
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    top_p: float = 1.0
    top_k: int = 0  # 0: disabled
    seed: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenParams":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and v is not None}
        if "stop" in known:
            stop = known["stop"]
            known["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        return cls(**known)


@dataclass(frozen=True)
class Generation:
    """The outcome of a completed generate call."""

    text: str
    tokens: int
    finish_reason: FinishReason
    prompt_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A model runtime living inside one engine process."""

    name: str

    def load(self) -> None:
        """Load the model. Called once, when the engine is initialised."""

    def generate(self, prompt: str, params: GenParams, on_token: TokenCallback) -> Generation:
        """Generate a completion, calling ``on_token`` with each new piece of text."""

    def abort(self) -> None:
        """Drop whatever request is in flight (called after KeyboardInterrupt)."""

    def release(self) -> None:
        """Free the model and stop every child process the backend started."""

    def describe(self) -> dict[str, Any]:
        """Backend name, model, device and anything an operator wants to see."""


class StopMatcher:
    """Finds the earliest stop sequence in generated text (shared by backends)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)

    def cut(self, text: str) -> str | None:
        """Return ``text`` truncated before the first stop sequence, or None."""
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return text[: min(hits)] if hits else None
