"""What a caller asks for, and the errors the supervisor's API raises."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmsup.supervisor.core.jobs import Job

if TYPE_CHECKING:
    from llmsup.supervisor.settings import Settings

OWNER_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")


def check_owner_name(owner: str) -> str:
    """An owner name (from the API key configuration): 1-64 of ``A-Z a-z 0-9 . _ @ + -``; no ``/``, which
    separates the owner from the idempotency key in the store. Raises InvalidRequest."""
    if not OWNER_NAME.fullmatch(owner):
        raise InvalidRequest(f"invalid owner name {owner[:80]!r}: 1-64 characters of A-Z a-z 0-9 . _ @ + -")
    return owner


def check_limits(settings: Settings, prompt: str, max_tokens: int | None, deadline_s: float | None,
                 unbounded: bool = False) -> tuple[int, float | None]:
    """The request's ``max_tokens`` and deadline (the settings' defaults where it gives none; for an ``unbounded``
    request none unless the server sets one: docs/deadlines.md), or InvalidRequest
    naming the limit it breaks. The one check of the limits the served spec states: the supervisor runs it at
    submit, the web app on every job of a request before it submits any."""
    if not prompt:
        raise InvalidRequest("prompt must not be empty")
    if len(prompt) > settings.max_prompt_chars:
        raise InvalidRequest(f"prompt longer than {settings.max_prompt_chars} characters")
    max_tokens = max_tokens if max_tokens is not None else settings.default_max_tokens
    if not 1 <= max_tokens <= settings.max_tokens_limit:
        raise InvalidRequest(f"max_tokens must be in [1, {settings.max_tokens_limit}]")
    deadline = deadline_s if deadline_s is not None else settings.default_deadline_s(unbounded)
    if deadline is not None and not 0 < deadline <= settings.max_deadline_s:
        raise InvalidRequest(f"deadline_s must be in (0, {settings.max_deadline_s}]")
    return max_tokens, deadline


@dataclass(frozen=True)
class JobRequest:
    prompt: str
    max_tokens: int | None = None
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    deadline_s: float | None = None  # None: the server's default (docs/deadlines.md)
    unbounded: bool = False  # an OpenAI request: with no deadline_s and no server default it runs without one
    queue_timeout_s: float | None = None
    priority: int = 0
    idempotency_key: str | None = None
    owner: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # further sampling params (top_p, top_k, seed, ...)
    pipeline: str | None = None  # the pipeline this job is a step of
    affinity: dict[str, Any] | None = None  # an engine record (id, host, ...) to run on when it has room
    pool: str | None = None  # the engine pool to run in: its name or its model's served name (None: the first)

    def __post_init__(self) -> None:
        if self.owner is not None:
            check_owner_name(self.owner)


class SupervisorError(Exception):
    """Base of the errors a caller can act on (mapped to 4xx by the web layer)."""


class QueueFull(SupervisorError):
    """The queue (``owner`` None), or one owner's share of it, is full."""

    def __init__(self, limit: int, retry_after_s: float, owner: str | None = None) -> None:
        if owner is None:
            super().__init__(f"queue full ({limit} jobs waiting)")
        else:
            super().__init__(f"{owner!r} has {limit} jobs queued, the most one owner may (owner_queue_max)")
        self.retry_after_s = retry_after_s
        self.owner = owner
        self.code = "queue_full" if owner is None else "owner_queue_full"


class JobNotFound(SupervisorError, KeyError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}")
        self.job_id = job_id

    def __str__(self) -> str:
        return self.args[0]


class EngineNotFound(SupervisorError, KeyError):
    def __init__(self, engine_id: int) -> None:
        super().__init__(f"no engine {engine_id}")

    def __str__(self) -> str:
        return self.args[0]


class PoolNotFound(SupervisorError, KeyError):
    def __init__(self, pool: str, pools: list[str]) -> None:
        super().__init__(f"no pool {pool!r}; pools: {', '.join(pools)}")

    def __str__(self) -> str:
        return self.args[0]


class HostNotFound(SupervisorError, KeyError):
    def __init__(self, host: str, ambiguous: bool = False) -> None:
        super().__init__(f"several hosts are named {host!r}: give its host_key" if ambiguous else f"no host {host!r}")

    def __str__(self) -> str:
        return self.args[0]


class HostNotRevocable(SupervisorError):
    """The server's own host cannot be revoked."""

    def __init__(self, host: str) -> None:
        super().__init__(f"host {host!r} is the server's own: it cannot be revoked (stop the server instead)")


class EngineBusy(SupervisorError):
    """An admin operation on an engine that is already being killed, recycled or restarted."""

    def __init__(self, engine_id: int, state: str) -> None:
        super().__init__(f"engine {engine_id} is {state}")


class InvalidRequest(SupervisorError, ValueError):
    pass


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool  # False: an existing job returned for a repeated idempotency key
