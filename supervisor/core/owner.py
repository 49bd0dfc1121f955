"""The supervisor core: the one owner of job, engine and host state.

Synchronous and deterministic: every decision takes the moment it acts at (:class:`~llmsup.supervisor.core.now.Now`:
monotonic for deadlines and the ladder, wall for records) from the caller; nothing here reads a clock. It asks the
cluster for work through an :class:`EngineDriver` and learns what happened from the typed events that drivers
:meth:`report`. It is made of three parts (``parts.py``): the job side, the engine side and the host side, which
reach one another only through small ports. Every job transition is written to the store before it is acted on;
every engine state change goes through ``engine_state.move``. The async shell (``service.Supervisor``) reads the
clocks and runs its loops: dispatch, timers (:meth:`tick` at :meth:`next_wakeup`), health.
"""

from __future__ import annotations

import builtins  # the method `list` shadows the builtin in the class body
import logging
from collections.abc import Sequence
from typing import Any

from llmsup.supervisor.core import outcomes
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.driver import EngineDriver, NotStarted
from llmsup.supervisor.core.engine_side import EngineSide
from llmsup.supervisor.core.engine_state import Engine
from llmsup.supervisor.core.events import EventHub
from llmsup.supervisor.core.host_side import Host, HostSide
from llmsup.supervisor.core.job_side import JobSide
from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.core.model_name import pool_model_name
from llmsup.supervisor.core.now import Now
from llmsup.supervisor.core.parts import Hooks, Shared
from llmsup.supervisor.core.pool import EnginePool
from llmsup.supervisor.core.requests import JobRequest, Submitted
from llmsup.supervisor.core.running import RunningJob
from llmsup.supervisor.metrics.buckets import Limits
from llmsup.supervisor.metrics.prometheus import Metrics
from llmsup.supervisor.pools import pools_of
from llmsup.supervisor.settings import Settings
from llmsup.supervisor.store import JobStore

log = logging.getLogger("llmsup.supervisor")
JOB_EVENTS = (ev.TaskStarted, ev.TokenPiece, ev.JobReply, ev.SigintDelivered, ev.ProbeAnswered)


class SupervisorCore:
    def __init__(self, settings: Settings, store: JobStore | None, driver: EngineDriver | None = None,
                 hooks: Hooks | None = None) -> None:
        self.settings = settings
        pool = EnginePool()
        metrics = Metrics(Limits.of(settings), lambda name: pool_model_name(settings, pool.engines.values(), name))
        self.shared = Shared(settings, driver if driver is not None else NotStarted(), pool, metrics, EventHub(),
                             hooks or Hooks())
        self.pool, self.metrics, self.hub = pool, metrics, self.shared.hub
        self.shared.pool_names = tuple(p.name for p in pools_of(settings))
        self.job_side = JobSide(self.shared, store)
        self.engine_side = EngineSide(self.shared)
        self.host_side = HostSide(self.shared)
        self.job_side.engines = self.engine_side
        self.engine_side.jobs, self.engine_side.hosts = self.job_side, self.host_side
        self.host_side.jobs, self.host_side.engines = self.job_side, self.engine_side

    # shared state ----------------------------------------------------------------------------
    @property
    def store(self) -> JobStore:
        return self.job_side.store

    @store.setter
    def store(self, store: JobStore) -> None:
        self.job_side.store_or_none = store

    @property
    def store_or_none(self) -> JobStore | None:
        return self.job_side.store_or_none

    @property
    def has_store(self) -> bool:
        return self.job_side.store_or_none is not None

    @property
    def driver(self) -> EngineDriver:
        return self.shared.driver

    @driver.setter
    def driver(self, driver: EngineDriver) -> None:
        self.shared.driver = driver  # the shell sets it at start

    @property
    def stopping(self) -> bool:
        return self.shared.stopping

    @stopping.setter
    def stopping(self, stopping: bool) -> None:
        self.shared.stopping = stopping

    @property
    def hosts(self) -> dict[str, Host]:
        return self.host_side.hosts

    @property
    def standby_target(self) -> int:
        return self.engine_side.standby_target

    @property
    def engine_config(self) -> dict[str, Any]:
        return self.engine_side.engine_config

    @property
    def last_engine_progress(self) -> float:
        return self.engine_side.last_engine_progress

    @property
    def start_failures(self) -> builtins.list[str]:
        """Engines' load errors since the start, in order (``core/start_failures.py`` decides on them)."""
        return self.engine_side.start_failures

    # jobs ------------------------------------------------------------------------------------
    def recover(self, now: Now) -> None:
        """After a restart: queued jobs stay queued; jobs that were running are re-queued."""
        self.job_side.recover(now)

    def submit(self, req: JobRequest, now: Now) -> Submitted:
        """Validate and queue a job; a repeated idempotency key returns the job it created."""
        return self.job_side.submit(req, now)

    def submit_many(self, reqs: builtins.list[JobRequest], now: Now) -> builtins.list[Submitted]:
        """Queue many jobs with one quota check: all or none."""
        return self.job_side.submit_many(reqs, now)

    def get(self, job_id: str) -> Job:
        return self.job_side.get(job_id)

    def list(self, statuses: builtins.list[JobStatus] | None = None, owner: str | None = None, limit: int = 100,
             offset: int = 0) -> builtins.list[Job]:
        return self.job_side.list(statuses, owner, limit, offset)

    def cancel(self, job_id: str, now: Now, note: str = "cancelled by user") -> Job:
        """Cancel a job: a queued one at once, a running one through the escalation ladder."""
        return self.job_side.cancel(job_id, now, note)

    def kill(self, job_id: str, now: Now) -> Job:
        return self.job_side.cancel(job_id, now, note="killed by admin")

    def ready(self) -> bool:
        return bool(self.pool.serving() or any(e.jobs for e in self.pool))

    def running_job(self, job_id: str) -> RunningJob | None:
        return self.job_side.running(job_id)

    def dispatch_ready(self, now: Now, limit: int | None = None) -> int:
        """Start as many ready jobs as there are free slots (at most ``limit``); returns how many started."""
        return self.job_side.dispatch_ready(now, limit)

    def next_wakeup(self) -> float | None:
        """The monotonic time of the next deadline or ladder step (None: nothing is due)."""
        return self.job_side.next_wakeup()

    def tick(self, now: Now) -> None:
        """Act on every deadline and ladder step that is due at ``now``."""
        self.job_side.tick(now)

    def requeue_all(self, why: str, now: Now) -> set[int]:
        """At stop: every running job goes back to the queue (at-least-once); returns the busy engines."""
        return self.job_side.requeue_all(why, now)

    def expire_queued(self, now: Now) -> int:
        """Queued jobs that waited past their queue timeout end ``expired``."""
        return self.job_side.expire_queued(now)

    # reports from drivers ---------------------------------------------------------------------
    def report(self, event: ev.Report, now: Now) -> None:
        """The one sink of drivers' events."""
        run = None
        try:
            if isinstance(event, JOB_EVENTS):
                run = self.job_side.by_key(event.key)
                if run is not None and not run.settled:
                    self.job_side.on_job_event(run, event, now)
            else:
                self.engine_side.on_engine_event(event, now)
        except Exception:  # never lose a job to a bug in handling one event: re-queue it, go on
            log.exception("job=%s: handling %s failed", run.job.id if run else "-", type(event).__name__)
            self.metrics.driver_errors.labels("report").inc()
            if run is not None and not run.settled:
                self.job_side.settle(run, outcomes.lost(run, f"internal error handling {type(event).__name__}",
                                                        self.settings.max_attempts), now)

    # engines ----------------------------------------------------------------------------------
    def configure_engines(self, engine_config: dict[str, Any], gpus: int | Sequence[str] = 0) -> None:
        """Plan each pool's engines over the host's visible devices (their names, or their count)."""
        self.engine_side.configure_engines(engine_config, gpus)

    def expected_engines(self) -> int:
        return self.engine_side.expected_engines()

    def start_give_up(self, n: int) -> str | None:
        """The load error to end the start on, or None to go on waiting for ``n`` engines."""
        return self.engine_side.start_give_up(n)

    def start_engines(self, n: int, now: Now) -> None:
        self.engine_side.start_engines(n, now)

    def reconcile(self, now: Now) -> None:
        self.engine_side.reconcile(now)

    def check_beats(self, now: Now) -> None:
        self.engine_side.check_beats(now)

    def engine_views(self, now: Now) -> builtins.list[dict[str, Any]]:
        return self.engine_side.engine_views(now)

    def find_engine(self, engine_id: int) -> Engine:
        return self.engine_side.find_engine(engine_id)

    def interrupt_engine(self, engine_id: int, now: Now) -> builtins.list[str]:
        return self.engine_side.interrupt_engine(engine_id, now)

    def restart_engine(self, engine_id: int, now: Now) -> builtins.list[str]:
        return self.engine_side.restart_engine(engine_id, now)

    def drain_engine(self, engine_id: int, drain: bool = True) -> None:
        self.engine_side.drain_engine(engine_id, drain)

    # hosts ------------------------------------------------------------------------------------
    def check_hosts(self, now: Now) -> None:
        self.host_side.check_hosts(now)

    def host_views(self, now: Now) -> builtins.list[dict[str, Any]]:
        return self.host_side.host_views(now)

    def revoke_host(self, name: str, now: Now) -> dict[str, Any]:
        """Revoke a host (by key or name): what was done, as the admin API answers it."""
        host, engines, jobs = self.host_side.revoke(name, now)
        return {"host": host.name, "host_key": host.key, "engines": engines, "jobs": jobs}

    # gauges -----------------------------------------------------------------------------------
    def update_gauges(self, now: Now) -> None:
        queued = self.store.count(JobStatus.QUEUED)  # indexed: this runs every health tick
        self.metrics.update(queued, self.job_side.running_count(), builtins.list(self.pool),
                            self.engine_side.standby_target, now.mono, now.wall,
                            self.shared.pool_names, self.job_side.pool_counts())
