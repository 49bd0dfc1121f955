"""The live handle of a running job: the only mutable part of a job's life."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from llmsup.supervisor.jobs import Job, JobStatus
from llmsup.supervisor.pool import Engine


@dataclass(eq=False)
class RunningJob:
    job: Job  # the stored record as it was when dispatched
    engine: Engine
    started_mono: float
    future: asyncio.Future | None = None
    pieces: list[str] = field(default_factory=list)
    first_token_mono: float | None = None
    deadline_timer: asyncio.TimerHandle | None = None
    interrupt_reason: JobStatus | None = None  # TIMED_OUT or CANCELLED once an interrupt is asked
    interrupt_mono: float | None = None
    escalation: asyncio.Task | None = None
    killed: bool = False  # the watchdog SIGKILLed its engine
    cancel_note: str = "cancelled by user"
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    task_started: asyncio.Event = field(default_factory=asyncio.Event)  # the engine began running it

    @property
    def key(self) -> str:
        """Stream key: the job id plus its attempt, so stale pieces of a lost attempt are ignored."""
        return f"{self.job.id}#{self.job.attempts}"

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def add_piece(self, seq: int, text: str, now: float) -> bool:
        if seq != len(self.pieces) or self.settled.is_set():
            return False
        if self.first_token_mono is None:
            self.first_token_mono = now
        self.pieces.append(text)
        return True
