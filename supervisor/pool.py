"""Engines the supervisor knows, their state and their free slots."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from llmsup.supervisor.jobs import EngineRef


class EngineState(str, Enum):
    STARTING = "starting"  # registered, backend loading
    IDLE = "idle"  # serving, no job
    BUSY = "busy"  # serving, at least one job
    INTERRUPTING = "interrupting"  # a job on it is being interrupted: nothing new until settled
    DRAINING = "draining"  # finishes its jobs, takes no new ones
    RESTARTING = "restarting"  # being killed / recycled; a replacement is on its way
    DEAD = "dead"  # gone; kept only until its replacement is started


SERVING = (EngineState.IDLE, EngineState.BUSY)


@dataclass
class Engine:
    id: int
    host: str
    host_key: str
    pid: int
    pgid: int
    gpu: str
    set_id: str  # engine set (local clusters); "" for engines of a joined cluster
    slots: int = 1
    state: EngineState = EngineState.STARTING
    jobs: dict[str, float] = field(default_factory=dict)  # job id -> started (monotonic)
    jobs_done: int = 0
    rss_mb: float = 0.0
    backend: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0  # wall clock
    restarts: int = 0
    batched: bool = False  # runs engines.batch.serve: jobs go over the control channel
    serving: Any = None  # the batched serving task's future
    last_beat: float = 0.0  # monotonic time of the serving loop's last heartbeat
    sigint_at: float | None = None  # monotonic time of the last SIGINT (batched: one per episode)

    @property
    def ref(self) -> EngineRef:
        return EngineRef(id=self.id, host=self.host, pid=self.pid, gpu=self.gpu)

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.jobs) if self.state in SERVING else 0

    def tag(self) -> str:
        return f"engine={self.id} host={self.host} pid={self.pid} gpu={self.gpu or 'cpu'}"

    def view(self, now: float) -> dict[str, Any]:
        """What the admin API shows (``now`` is monotonic)."""
        jobs = [{"job_id": jid, "running_s": round(now - t, 3)} for jid, t in self.jobs.items()]
        return {
            "id": self.id, "host": self.host, "pid": self.pid, "gpu": self.gpu, "state": self.state.value,
            "job_id": jobs[0]["job_id"] if jobs else None, "jobs": jobs, "slots": self.slots,
            "jobs_done": self.jobs_done, "rss_mb": self.rss_mb, "backend": self.backend.get("backend"),
            "model": self.backend.get("model"), "engine_set": self.set_id, "restarts": self.restarts,
        }

    def refresh_state(self) -> None:
        if self.state in SERVING:
            self.state = EngineState.BUSY if self.jobs else EngineState.IDLE


class EnginePool:
    def __init__(self) -> None:
        self.engines: dict[int, Engine] = {}

    def add(self, engine: Engine) -> None:
        self.engines[engine.id] = engine

    def remove(self, engine_id: int) -> Engine | None:
        return self.engines.pop(engine_id, None)

    def get(self, engine_id: int) -> Engine | None:
        return self.engines.get(engine_id)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self.engines.values()))

    def serving(self) -> list[Engine]:
        return [e for e in self.engines.values() if e.state in SERVING]

    def free_slots(self) -> int:
        return sum(e.free_slots for e in self.engines.values())

    def pick(self, avoid: Iterable[int] = ()) -> Engine | None:
        """The least-loaded engine with a free slot, preferring engines not in ``avoid``."""
        avoid = set(avoid)
        candidates = [e for e in self.engines.values() if e.free_slots > 0]
        if not candidates:
            return None
        candidates.sort(key=lambda e: (e.id in avoid, len(e.jobs) / e.slots, e.jobs_done, e.id))
        return candidates[0]
