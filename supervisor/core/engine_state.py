"""Engines' one state machine: the states, the allowed moves, and the only code that writes an engine's state.

An :class:`Engine` is the supervisor's live record of one engine process (like a
job's live handle, it changes while the engine lives). Its ``state`` is read
anywhere and written only by :func:`move`, which checks the move against
:data:`ALLOWED`, raises :class:`EngineStateError` on any other, and logs each
change once. Only the supervisor core calls :func:`move`; drivers report events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from llmsup.supervisor.core.jobs import EngineRef

log = logging.getLogger("llmsup.engines")


class EngineState(str, Enum):
    STARTING = "starting"  # registered with the controller; identity known, backend loading
    STANDBY = "standby"  # loaded and warm, given no jobs: takes the place of a serving engine that goes
    IDLE = "idle"  # serving, no job
    BUSY = "busy"  # serving, at least one job
    INTERRUPTING = "interrupting"  # its job is being interrupted: nothing new until that job is settled
    DRAINING = "draining"  # finishes its jobs, takes no new ones (admin drain, or a recycle waiting for its jobs)
    RESTARTING = "restarting"  # being killed or recycled; its replacement is launched when it is gone
    DEAD = "dead"  # gone: out of the pool


S = EngineState
ALLOWED: dict[EngineState, frozenset[EngineState]] = {
    S.STARTING: frozenset({S.IDLE, S.STANDBY, S.RESTARTING, S.DEAD}),
    S.STANDBY: frozenset({S.IDLE, S.RESTARTING, S.DEAD}),
    S.IDLE: frozenset({S.BUSY, S.DRAINING, S.RESTARTING, S.DEAD}),
    S.BUSY: frozenset({S.IDLE, S.INTERRUPTING, S.DRAINING, S.RESTARTING, S.DEAD}),
    S.INTERRUPTING: frozenset({S.IDLE, S.BUSY, S.DRAINING, S.RESTARTING, S.DEAD}),
    S.DRAINING: frozenset({S.IDLE, S.BUSY, S.RESTARTING, S.DEAD}),
    S.RESTARTING: frozenset({S.DEAD}),
    S.DEAD: frozenset(),
}
SERVING = frozenset({S.IDLE, S.BUSY})  # may take a new job
GONE = frozenset({S.RESTARTING, S.DEAD})  # on its way out, or out
ACTIVE = frozenset({S.IDLE, S.BUSY, S.INTERRUPTING, S.DRAINING})  # holds a serving place (jobs, or ready for them)


class EngineStateError(RuntimeError):
    def __init__(self, engine: Engine, target: EngineState) -> None:
        super().__init__(f"engine {engine.id}: {engine.state.value} -> {target.value} is not allowed")
        self.target = target


@dataclass(eq=False)
class Engine:
    id: int
    host: str
    host_key: str  # hostname + boot id: equal keys mean this host can signal the pid
    pid: int
    gpu: str
    pid_started: float | None = None  # the process's start time: a signal goes to this pid only while it matches
    set_id: str = ""  # the engine set this supervisor launched it in; "" when someone else started it
    slots: int = 1
    batched: bool = False  # runs the serving loop: jobs go over the control channel
    started_at: float = 0.0  # wall clock
    jobs: dict[str, float] = field(default_factory=dict)  # job id -> started (monotonic)
    jobs_done: int = 0
    rss_mb: float = 0.0
    gpu_mem_mb: float | None = None  # GPU memory of the engine and its children, as it reports it (None: no GPU)
    backend: dict[str, Any] = field(default_factory=dict)
    last_beat: float = 0.0  # monotonic time of the serving loop's last heartbeat (batched)
    sigint_at: float | None = None  # monotonic time of the last SIGINT to a batched engine: one per episode
    recycle_why: str | None = None  # set when it is to be recycled as soon as its jobs are done
    restarts: int = 0  # engines that held this place before it (killed, lost or recycled)
    launched_on: str = ""  # the host its launcher was asked to start it on (ssh launcher; "" otherwise)
    log_file: str = ""  # the engine process's own log file, as it reported it
    pool: str = "default"  # the engine pool it serves (its model, backend and settings)
    _state: EngineState = S.STARTING

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def ref(self) -> EngineRef:
        return EngineRef(id=self.id, host=self.host, pid=self.pid, gpu=self.gpu)

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.jobs) if self._state in SERVING else 0

    def tag(self) -> str:
        return f"engine={self.id} host={self.host} pid={self.pid} gpu={self.gpu or 'cpu'}"

    def view(self, now: float) -> dict[str, Any]:
        """What the admin API shows (``now`` is monotonic)."""
        jobs = [{"job_id": jid, "running_s": round(now - t, 3)} for jid, t in self.jobs.items()]
        return {
            "id": self.id, "host": self.host, "pid": self.pid, "gpu": self.gpu, "state": self._state.value,
            "job_id": jobs[0]["job_id"] if jobs else None, "jobs": jobs, "slots": self.slots,
            "jobs_done": self.jobs_done, "rss_mb": self.rss_mb,
            "gpu_mem_mb": self.gpu_mem_mb, "backend": self.backend.get("backend"),
            "model": self.backend.get("model"), "engine_set": self.set_id, "restarts": self.restarts,
            "log_file": self.log_file or None, "pool": self.pool,
        }


def move(engine: Engine, target: EngineState, why: str) -> None:
    """The one writer of engine state: check the move, log it once, make it."""
    if target is engine.state:
        return
    if target not in ALLOWED[engine.state]:
        raise EngineStateError(engine, target)
    log.info("%s %s -> %s: %s", engine.tag(), engine.state.value, target.value, why)
    engine._state = target


def after_jobs_change(engine: Engine, why: str) -> None:
    """A serving engine is busy while it holds a job and idle when it holds none."""
    if engine.state in SERVING or engine.state is S.INTERRUPTING:
        move(engine, S.BUSY if engine.jobs else S.IDLE, why)
