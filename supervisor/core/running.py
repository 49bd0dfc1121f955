"""The live handle of a running job: the only mutable part of a job's life (written by the core alone)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmsup.engines.protocol import TokenLogprob
from llmsup.supervisor.core.engine_state import Engine
from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.core.ladder import Escalation


@dataclass(eq=False)
class RunningJob:
    job: Job  # the stored record as it was when dispatched
    engine: Engine
    started_mono: float
    serial: int = 0  # this dispatch's number (the supervisor's own count)
    pieces: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per piece, when the job asked
    token_ids: list[int] = field(default_factory=list)  # one per piece, when the job asked
    first_token_mono: float | None = None
    last_token_mono: float | None = None
    task_started: bool = False  # the engine said it runs the job (a SIGINT now reaches it)
    escalation: Escalation | None = None  # the ladder, once an interrupt is asked
    killed: bool = False  # the watchdog SIGKILLed its engine
    stalled_s: float = 0.0  # above 0: interrupted for producing no token for this long (a runaway)
    cancel_note: str = "cancelled by user"
    settled: bool = False

    @property
    def key(self) -> str:
        """Stream key: the job id, its attempt and this dispatch's number. An attempt that was not charged (its
        host lost) runs again under a new key, so whatever the old run still sends is dropped."""
        return f"{self.job.id}#{self.job.attempts}.{self.serial}"

    @property
    def deadline_at(self) -> float:
        """When its deadline passes (monotonic; inf: it has none)."""
        return float("inf") if self.job.deadline_s is None else self.started_mono + self.job.deadline_s

    def stall_at(self, stall_s: float) -> float:
        """When it has gone ``stall_s`` without a token (from its start before the first; inf: no stall limit)."""
        if stall_s <= 0:
            return float("inf")
        return (self.last_token_mono if self.last_token_mono is not None else self.started_mono) + stall_s

    def due_at(self, stall_s: float) -> float:
        """Its next check: its deadline or its stall limit, whichever comes first."""
        return min(self.deadline_at, self.stall_at(stall_s))

    @property
    def interrupt_reason(self) -> JobStatus | None:
        return self.escalation.reason if self.escalation else None

    @property
    def interrupt_mono(self) -> float | None:
        return self.escalation.asked_at if self.escalation else None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def add_piece(self, seq: int, text: str, now: float, token_id: int | None = None,
                  logprob: TokenLogprob | None = None) -> bool:
        """Take the ``seq``-th token (with its id and logprob when the job asked); False for one out of order."""
        if seq != len(self.pieces) or self.settled:
            return False
        if self.first_token_mono is None:
            self.first_token_mono = now
        self.last_token_mono = now
        self.pieces.append(text)
        if token_id is not None and len(self.token_ids) == seq:
            self.token_ids.append(token_id)
        if logprob is not None and len(self.logprobs) == seq:
            self.logprobs.append(logprob)
        return True

    def streamed_extras(self) -> dict[str, tuple[Any, ...]]:
        """The logprobs and token ids streamed so far (Job fields; only those the job asked for)."""
        extras: dict[str, tuple[Any, ...]] = {}
        if self.logprobs:
            extras["logprobs"] = tuple(self.logprobs)
        if self.token_ids:
            extras["token_ids"] = tuple(self.token_ids)
        return extras
