"""The whole supervisor in this process, for tests: no cluster, no engine processes, no files but the run directory's.

Like huey's immediate mode: ``InProcessSupervisor`` is the real supervisor (the core, its dispatch, timer and health
loops, the waiters, the event hub) on the in-process driver (``core/sim_driver.py``: the sim backend's behaviours on
the loop's timers) and the in-memory store. The web app serves the same HTTP contract on it as on ``llmsup serve``
(``create_app(settings, make=InProcessSupervisor)``, or ``supervisor=`` one built by the caller). Only the sim
backend is simulated: any other backend named in the settings runs as sim here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from llmsup.supervisor.core.sim_driver import InProcessDriver
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings
from llmsup.supervisor.store import JobStore, MemoryStore


class InProcessSupervisor(Supervisor):
    def __init__(self, settings: Settings, store: JobStore | None = None, clock: Callable[[], float] = time.time):
        super().__init__(settings, store if store is not None else MemoryStore(), clock=clock)

    async def _start_driver(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        loop = asyncio.get_running_loop()
        self.core.driver = InProcessDriver(self.report, loop.call_later, self.settings.sim_token_s)
        self.core.configure_engines(dict(self.settings.for_engines(), backend="sim"))
        return []  # the driver reports from its timers: no channel to read
