"""A fake cluster and a fake clock for the supervisor core: what the core asks is recorded, reports are given
by hand, time moves only when the test moves it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from llmsup.engines.messages import JobSpec
from llmsup.supervisor.core.engine_state import Engine
from llmsup.supervisor.core.now import Now


@dataclass
class FakeClock:
    wall: float = 1_000_000.0
    mono: float = 100.0

    @property
    def now(self) -> Now:
        """The moment the core is handed (the core reads no clock itself)."""
        return Now(self.mono, self.wall)

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@dataclass
class FakeDriver:
    """Records every request of the core as (verb, engine id or set, detail)."""

    can_launch: bool = True
    local_key: str = "h|boot"  # the supervisor's own host (the engines bring_up makes run there)
    calls: list[tuple[str, Any, Any]] = field(default_factory=list)
    _sets: itertools.count = field(default_factory=itertools.count)

    def verbs(self, verb: str) -> list[tuple[str, Any, Any]]:
        return [c for c in self.calls if c[0] == verb]

    def engine_ids(self) -> set[int]:
        return set()

    def is_local(self, engine: Engine) -> bool:
        return engine.host_key == self.local_key

    def poll(self) -> None:
        return None

    def launch(self, gpu: str, host: str = "") -> str:
        set_id = f"e{next(self._sets)}"
        self.calls.append(("launch", set_id, gpu))
        return set_id

    def order_host(self, agent: str, fence: tuple[int, ...] = (), stop: bool = False) -> None:
        self.calls.append(("order_host", agent, (fence, stop)))

    def revoke_host(self, host_key: str, agent: str, engine_ids: tuple[int, ...]) -> None:
        self.calls.append(("revoke_host", host_key, (agent, engine_ids)))

    def identify(self, engine_id: int) -> None:
        self.calls.append(("identify", engine_id, None))

    def load(self, engine: Engine, config: dict[str, Any]) -> None:
        self.calls.append(("load", engine.id, config))

    def start_serving(self, engine: Engine) -> None:
        self.calls.append(("start_serving", engine.id, None))

    def dispatch(self, engine: Engine, key: str, spec: JobSpec, deadline_s: float | None) -> None:
        self.calls.append(("dispatch", engine.id, key))

    def abort(self, engine: Engine, key: str) -> None:
        self.calls.append(("abort", engine.id, key))

    def sigint(self, engine: Engine, key: str) -> None:
        self.calls.append(("sigint", engine.id, key))

    def probe(self, engine: Engine, key: str) -> None:
        self.calls.append(("probe", engine.id, key))

    def kill(self, engine: Engine) -> None:
        self.calls.append(("kill", engine.id, None))

    def retire(self, engine: Engine, release: bool) -> None:
        self.calls.append(("retire", engine.id, release))

    async def stop(self, engines: list[Engine], busy: set[int]) -> None:
        self.calls.append(("stop", None, None))
