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

The messages between the supervisor and its engines (job spec, result, control
ops, token stream) are in ``engines/messages.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

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


@dataclass(frozen=True)
class StepOutput:
    """What one engine step produced for one request of a batch."""

    key: str
    text: str  # new text since the last step ("" if the new tokens decode to nothing yet)
    new_tokens: int
    finished: bool = False
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0


@runtime_checkable
class BatchBackend(Protocol):
    """A backend that runs many requests at once (continuous batching).

    A request added while others run joins the batch at the next step.
    """

    def add_request(self, key: str, prompt: str, params: GenParams) -> None:
        """Queue a request; it joins the running batch at the next step."""

    def step(self) -> list[StepOutput]:
        """Advance every active request by one step."""

    def abort_requests(self, keys: list[str]) -> None:
        """Drop these requests (their slots are free at the next step); the others go on."""
