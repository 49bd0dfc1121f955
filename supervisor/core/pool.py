"""The engines the supervisor knows, the launches on their way, and where the next job goes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from llmsup.supervisor.core.engine_state import SERVING, Engine
from llmsup.supervisor.core.jobs import EngineRef


@dataclass(frozen=True)
class Launch:
    """An engine asked for and not registered yet."""

    set_id: str
    gpu: str
    since: float  # wall clock
    restarts: int = 0  # the engines that held this place before (0: a first start)
    host: str = ""  # the host a launcher that starts engines on named hosts (ssh) was asked for
    pool: str = "default"  # the engine pool it is for


class EnginePool:
    def __init__(self) -> None:
        self.engines: dict[int, Engine] = {}
        self.launches: dict[str, Launch] = {}  # engine set -> launch in flight

    def add(self, engine: Engine) -> None:
        self.engines[engine.id] = engine

    def remove(self, engine_id: int) -> Engine | None:
        return self.engines.pop(engine_id, None)

    def get(self, engine_id: int) -> Engine | None:
        return self.engines.get(engine_id)

    def __iter__(self) -> Iterator[Engine]:
        return iter(list(self.engines.values()))

    def serving(self) -> list[Engine]:
        return [e for e in self.engines.values() if e.state in SERVING]

    def free_slots(self) -> int:
        return sum(e.free_slots for e in self.engines.values())

    def pool_names(self) -> set[str]:
        return {e.pool for e in self.engines.values()}

    def on_host(self, host_key: str) -> int:
        return sum(1 for e in self.engines.values() if e.host_key == host_key)

    def affinity_busy(self, affinity: EngineRef | None, pool: str) -> bool:
        """The engine ``affinity`` names serves ``pool`` and has no free slot now (one may free soon: worth a
        short wait)."""
        if affinity is None:
            return False
        engine = self.engines.get(affinity.id)
        return engine is not None and engine.host == affinity.host and engine.pool == pool \
            and engine.state in SERVING and engine.free_slots == 0

    def pick(self, avoid: Iterable[int] = (), affinity: EngineRef | None = None,
             pool: str = "default") -> Engine | None:
        """The least-loaded engine of ``pool`` with a free slot, preferring engines not in ``avoid``; with an
        ``affinity``, that engine when it has room, else one on its host, else any."""
        avoid = set(avoid)
        candidates = [e for e in self.engines.values() if e.free_slots > 0 and e.pool == pool]
        if not candidates:
            return None

        def near(e: Engine) -> int:  # 0: the affinity's engine, 1: its host, 2: elsewhere
            if affinity is None:
                return 0
            return 0 if e.id == affinity.id else 1 if e.host == affinity.host else 2

        candidates.sort(key=lambda e: (e.id in avoid, near(e), len(e.jobs) / e.slots, e.jobs_done, e.id))
        return candidates[0]
