"""The parts of the supervisor core and the small interfaces between them.

:class:`~llmsup.supervisor.core.owner.SupervisorCore` is the one owner of state; it composes three parts:

- the job side (:class:`~llmsup.supervisor.core.job_side.JobSide`): queue, dispatch, the ladder's timers, settling;
- the engine side (:class:`~llmsup.supervisor.core.engine_side.EngineSide`): engines' lives, launches, standbys;
- the host side (:class:`~llmsup.supervisor.core.host_side.HostSide`): hosts, and losing one.

Each part holds the :class:`Shared` state and reaches the others only through the protocols below (public
methods, each taking the moment it acts at). Nothing here reads a clock: every ``now`` comes from the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from llmsup.supervisor.core.now import Now

if TYPE_CHECKING:
    from llmsup.supervisor.core import reports as ev
    from llmsup.supervisor.core.driver import EngineDriver
    from llmsup.supervisor.core.engine_state import Engine, EngineState
    from llmsup.supervisor.core.events import EventHub
    from llmsup.supervisor.core.host_side import Host
    from llmsup.supervisor.core.jobs import Job
    from llmsup.supervisor.core.outcomes import Settlement
    from llmsup.supervisor.core.pool import EnginePool
    from llmsup.supervisor.core.running import RunningJob
    from llmsup.supervisor.metrics.prometheus import Metrics
    from llmsup.supervisor.settings import Settings

log = logging.getLogger("llmsup.engines")


def _nothing() -> None:
    return None


def _settled_nothing(job: Job) -> None:
    return None


@dataclass
class Hooks:
    """What the core tells whoever runs it (the async shell's loops and waiters); no-ops by default."""

    wake_dispatch: Callable[[], None] = _nothing  # a slot or a job became available
    wake_timers: Callable[[], None] = _nothing  # a timer earlier than the timer loop's next wake-up may be added
    on_settled: Callable[[Job], None] = _settled_nothing  # a job reached a terminal status


@dataclass(eq=False)
class Shared:
    """What every part reads: settings, the driver (set by the shell at start), the engines, metrics, the event
    hub, the hooks, and whether the supervisor is stopping."""

    settings: Settings
    driver: EngineDriver
    pool: EnginePool
    metrics: Metrics
    hub: EventHub
    hooks: Hooks = field(default_factory=Hooks)
    stopping: bool = False
    pool_names: tuple[str, ...] = ("default",)  # the engine pools the server runs

    def drive(self, what: str, engine: Engine | None, call: Callable[[], object], job_id: str | None = None) -> bool:
        """Ask the driver for something; an unexpected error is logged with the job and engine, counted, and
        reported as False so that the caller takes the failure path (the supervisor never stops on it)."""
        try:
            call()
            return True
        except Exception:  # a driver bug or an OS error must not leave a job or an engine stuck
            log.exception("job=%s %s: %s failed", job_id or "-", engine.tag() if engine else "-", what)
            self.metrics.driver_errors.labels(what).inc()
            return False


class JobsPort(Protocol):
    """What the engine and host sides ask of the job side."""

    def running(self, job_id: str) -> RunningJob | None: ...

    def cancel(self, job_id: str, now: Now, note: str = "cancelled by user") -> Job: ...

    def settle(self, run: RunningJob, st: Settlement, now: Now) -> None: ...

    def settle_engine_jobs(self, engine: Engine, why: str, killed: bool, now: Now) -> None: ...


class EnginesPort(Protocol):
    """What the job and host sides ask of the engine side."""

    def engine_lost(self, engine: Engine, why: str, now: Now) -> None: ...

    def kill_engine(self, engine: Engine, reason: str, now: Now) -> None: ...

    def maybe_recycle(self, engine: Engine, now: Now) -> None: ...

    def take_out(self, engine: Engine, target: EngineState, why: str) -> None: ...

    def gone(self, engine: Engine, reason: str, release: bool, now: Now) -> None: ...


class HostsPort(Protocol):
    """What the engine side asks of the host side."""

    def host(self, key: str, name: str) -> Host: ...

    def host_back(self, host: Host, why: str) -> None: ...

    def agent_engines_wanted(self) -> int: ...

    def is_revoked(self, host_key: str) -> bool: ...

    def agent_wants_standby(self, engine: Engine) -> bool: ...

    def on_host_heard(self, event: ev.HostHeard, now: Now) -> None: ...

    def on_report_of_gone_engine(self, event: ev.Report, now: Now) -> None: ...
