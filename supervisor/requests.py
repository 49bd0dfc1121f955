"""What a caller asks for, and the errors the supervisor's API raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmsup.supervisor.jobs import Job


@dataclass(frozen=True)
class JobRequest:
    prompt: str
    max_tokens: int | None = None
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    deadline_s: float | None = None
    queue_timeout_s: float | None = None
    priority: int = 0
    idempotency_key: str | None = None
    owner: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # further sampling params (top_p, top_k, seed, ...)


class SupervisorError(Exception):
    """Base of the errors a caller can act on (mapped to 4xx by the web layer)."""


class QueueFull(SupervisorError):
    def __init__(self, limit: int, retry_after_s: float) -> None:
        super().__init__(f"queue full ({limit} jobs waiting)")
        self.retry_after_s = retry_after_s


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
