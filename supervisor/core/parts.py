"""What the sides of the supervisor core use from one another, declared once for the type checker.

:class:`~llmsup.supervisor.core.owner.SupervisorCore` is one object made of three parts: the job side (``core.py``),
the engine side (:class:`~llmsup.supervisor.core.engine_owner.EngineOwner`) and the host side
(:class:`~llmsup.supervisor.core.host_owner.HostOwner`). Each part is a base class of the core and calls members
that another part defines; :class:`CoreParts`, a base of both owner classes, names those members and their
types. The core provides every one of them (the type checker verifies it), so nothing here runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from llmsup.supervisor.core import reports as ev
    from llmsup.supervisor.core.driver import EngineDriver
    from llmsup.supervisor.core.engine_state import Engine, EngineState
    from llmsup.supervisor.core.host_owner import Host
    from llmsup.supervisor.core.jobs import Job
    from llmsup.supervisor.core.outcomes import Settlement
    from llmsup.supervisor.core.pool import EnginePool
    from llmsup.supervisor.core.running import RunningJob
    from llmsup.supervisor.metrics.prometheus import Metrics
    from llmsup.supervisor.settings import Settings


class CoreParts(Protocol):
    # the core's state (set in SupervisorCore.__init__)
    settings: Settings
    driver: EngineDriver
    pool: EnginePool
    metrics: Metrics
    clock: Callable[[], float]  # wall clock, for records
    mono: Callable[[], float]  # monotonic, for deadlines and the ladder
    stopping: bool
    _running: dict[str, RunningJob]  # job id -> live handle

    # the job side (core.py)
    def wake_dispatch(self) -> None: ...

    def report(self, event: ev.Report, now: float | None = None) -> None: ...

    def cancel(self, job_id: str, note: str = "cancelled by user") -> Job: ...

    def settle_engine_jobs(self, engine: Engine, why: str, killed: bool) -> None: ...

    def _settle(self, run: RunningJob, st: Settlement) -> None: ...

    # the engine side (engine_owner.py)
    def _drive(self, what: str, engine: Engine | None, call: Callable[[], object], job_id: str | None = None) -> bool:
        ...

    def _take_out(self, engine: Engine, target: EngineState, why: str) -> None: ...

    def _gone(self, engine: Engine, reason: str, release: bool) -> None: ...

    # the host side (host_owner.py)
    def _host(self, key: str, name: str) -> Host: ...

    def _host_back(self, host: Host, why: str) -> None: ...

    def agent_engines_wanted(self) -> int: ...

    def agent_wants_standby(self, engine: Engine) -> bool: ...

    def on_host_heard(self, event: ev.HostHeard, now: float) -> None: ...

    def on_report_of_gone_engine(self, event: ev.Report, now: float) -> None: ...
