"""Admin operations on engines (a mixin of the Supervisor: they act on its pool and engine manager)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from llmsup.supervisor.pool import Engine, EnginePool, EngineState
from llmsup.supervisor.requests import EngineNotFound

if TYPE_CHECKING:
    from llmsup.supervisor.engine_manager import EngineManager
    from llmsup.supervisor.jobs import Job


class EngineAdmin:
    pool: EnginePool
    engines: EngineManager
    _wake: asyncio.Event

    def cancel(self, job_id: str, note: str = "cancelled by user") -> Job:  # provided by the Supervisor
        raise NotImplementedError

    def engine_views(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [e.view(now) for e in sorted(self.pool.engines.values(), key=lambda e: e.id)]

    def find_engine(self, engine_id: int) -> Engine:
        engine = self.pool.get(engine_id)
        if engine is None:
            raise EngineNotFound(engine_id)
        return engine

    def interrupt_engine(self, engine_id: int) -> list[str]:
        """Interrupt every job on the engine (they end cancelled); the engine stays."""
        engine = self.find_engine(engine_id)
        ids = list(engine.jobs)
        for jid in ids:
            self.cancel(jid, note=f"interrupted by admin on engine {engine_id}")
        return ids

    async def restart_engine(self, engine_id: int) -> None:
        """Replace the engine: recycled cleanly when idle, killed when busy (its jobs re-queued, uncharged)."""
        engine = self.find_engine(engine_id)
        if engine.jobs:
            await self.engines.kill_and_replace(engine, "admin_restart")
        else:
            engine.state = EngineState.RESTARTING
            await self.engines.recycle(engine, "admin_restart")

    def drain_engine(self, engine_id: int, drain: bool = True) -> None:
        """A draining engine finishes its jobs and takes no new ones (until undrained)."""
        engine = self.find_engine(engine_id)
        if drain and engine.state in (EngineState.IDLE, EngineState.BUSY):
            engine.state = EngineState.DRAINING
        elif not drain and engine.state is EngineState.DRAINING:
            engine.state = EngineState.BUSY if engine.jobs else EngineState.IDLE
            self._wake.set()
