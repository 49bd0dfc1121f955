"""The port between the web app and the control plane: every operation ``web/`` may ask of the supervisor.

The web app holds a :class:`ControlPlane` and nothing else of the supervisor: it never sees the engine pool, the
store, the event hub or the driver, and never downcasts. The real control plane is ``Supervisor``
(``supervisor/service.py``), on an IPyParallel cluster or in-process on a simulated driver
(``supervisor/inprocess.py``); both satisfy this Protocol, checked by mypy where the composition root passes them in.
"""

from __future__ import annotations

import builtins  # the port's method `list` shadows the builtin in the class body
from collections.abc import Callable
from typing import Any, Protocol

from llmsup.supervisor.core.events import Subscription
from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.core.requests import JobRequest, Submitted
from llmsup.supervisor.metrics.prometheus import Metrics
from llmsup.supervisor.pipelines.runner import PipelineRunner
from llmsup.supervisor.settings import Settings
from llmsup.supervisor.store.protocol import PageReader

__all__ = ["ControlPlane", "PageReader"]


class ControlPlane(Protocol):
    """What the web app asks of the supervisor. Errors are the core's typed ones (``supervisor/core/requests.py``:
    JobNotFound, InvalidRequest, QueueFull, EngineNotFound, EngineBusy, HostNotFound,
    HostNotRevocable; ``transitions.InvalidTransition``)."""

    settings: Settings
    metrics: Metrics  # its registry (``/metrics``), history (``/v1/stats``), served model name
    clock: Callable[[], float]  # wall clock, for records
    started: bool  # its engines and loops run (False: built, or stopped, or never started by its owner)
    pipelines: PipelineRunner  # multi-step jobs: create, get, list, cancel, their event hub

    # lifecycle (the app's lifespan starts and stops a control plane it built itself) -------------------------
    async def start(self) -> None:
        """Start everything it needs; stop what was started if a step fails."""

    async def stop(self) -> None:
        """Stop everything it started; safe after a partial start."""

    def ready(self) -> bool:
        """Started, and an engine serves (or a job runs)."""

    # jobs -------------------------------------------------------------------------------------------------
    def submit(self, req: JobRequest) -> Submitted:
        """Queue a job (or return the existing one for a repeated idempotency key)."""

    def submit_many(self, reqs: builtins.list[JobRequest]) -> builtins.list[Submitted]:
        """Queue many jobs with one quota check: all or none (InvalidRequest names the one at fault)."""

    async def committed(self) -> None:
        """Returns once every write so far is in the store (the store groups a loop turn's writes): await it before
        an answer that promises a write (a 202)."""

    def get(self, job_id: str) -> Job:
        """The job with its output so far (JobNotFound)."""

    def list(self, statuses: builtins.list[JobStatus] | None = None, owner: str | None = None, limit: int = 100,
             offset: int = 0) -> builtins.list[Job]:
        """Jobs newest first, on the loop, running ones with their live output."""

    def page_reader(self) -> PageReader | None:
        """A reader of pages that may run in a worker thread; None when the store lists in place (in memory)."""

    def count(self, status: JobStatus) -> int:
        """Jobs in one status."""

    def cancel(self, job_id: str, note: str = "cancelled by user") -> Job:
        """End a queued job at once; interrupt a running one (it ends cancelled with its partial output)."""

    def kill(self, job_id: str) -> Job:
        """The admin's cancel."""

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Until the job ends (TimeoutError after ``timeout``)."""

    def subscribe(self, job_id: str | None = None) -> Subscription:
        """Events of one job (None: of every job), from now on; close the subscription when done."""

    # engines and hosts --------------------------------------------------------------------------------------
    def serving_engines(self) -> int:
        """Engines that serve now."""

    def engine_views(self) -> builtins.list[dict[str, Any]]:
        """Every engine as the admin API shows it, with ``local`` (on this host) and ``started_at`` (wall clock)."""

    def starting_engines(self) -> builtins.list[tuple[str, str]]:
        """Launches not registered yet: (engine set, devices), in engine-set order."""

    def host_views(self) -> builtins.list[dict[str, Any]]:
        """Every host as the admin API shows it, this host first."""

    def engine_view(self, engine_id: int) -> dict[str, Any]:
        """One engine as ``engine_views`` shows it (EngineNotFound)."""

    def interrupt_engine(self, engine_id: int) -> builtins.list[str]:
        """Interrupt every job on the engine (they end cancelled); returns their ids."""

    def restart_engine(self, engine_id: int) -> builtins.list[str]:
        """Replace the engine (EngineBusy when already on its way out); returns the ids of its jobs."""

    def drain_engine(self, engine_id: int, drain: bool = True) -> None:
        """Let the engine finish its jobs and take no new ones (``drain=False``: undo)."""

    def revoke_host(self, host: str) -> dict[str, Any]:
        """Revoke a host (its key or name; HostNotFound, HostNotRevocable for the server's own): its engines leave
        (their jobs run again elsewhere), its join agent is told to stop, its and its engines' keys are revoked.
        Returns ``host``, ``host_key``, ``engines`` (ids taken out) and ``jobs`` (ids that were running there)."""

    # the model and figures ------------------------------------------------------------------------------------
    def model_facts(self, pool: str | None = None) -> builtins.list[dict[str, Any]]:
        """What the pool's engines (None: the first pool's) reported of its configured model (backend, model path,
        max_model_len, chat template...), its own host's engines first (``local``): ``supervisor/core/model_facts.py``."""

    def served_model_name(self) -> str:
        """The model name the OpenAI routes answer to (the first pool's first name)."""

    def served_model_names(self) -> builtins.list[str]:
        """Every name the first pool's model answers to (its aliases)."""

    def served_pools(self) -> dict[str, str]:
        """Each served model name -> its pool's name (one pool: each alias -> ``default``)."""

    def update_gauges(self) -> None:
        """Bring the metrics' gauges up to now."""

    async def prune_forever(self) -> None:
        """Delete finished jobs past the retention settings, batch by batch, for the app's life."""
