"""The supervisor process: the core (``core/owner.py``) with its drivers and loops on one asyncio loop.

This shell starts and stops what the core needs (job store, IPyParallel
cluster, token stream, control channel), runs the loops that feed the core
(dispatch, timers, health), and lets callers wait for a job to end. It reads
the clocks and hands the core the moment of each call (the core reads none).
All decisions are the core's; every loop is supervised: an unexpected error is
logged and the loop goes on. It is the web app's control plane
(``supervisor/port.py``: the operations the app may ask).
"""

from __future__ import annotations

import asyncio
import builtins  # the method `list` shadows the builtin in the class body
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from llmsup.engines import messages as wire
from llmsup.engines import placement
from llmsup.engines.messages import StreamEvent
from llmsup.supervisor import runfiles
from llmsup.supervisor.aio import within
from llmsup.supervisor.cluster.control import ControlChannel
from llmsup.supervisor.cluster.curve import ChannelGate, ChannelKeys, engine_of
from llmsup.supervisor.cluster.driver import ClusterDriver
from llmsup.supervisor.cluster.leftovers import ProcessLedger
from llmsup.supervisor.cluster.manager import Channels, ClusterManager, listen_addresses
from llmsup.supervisor.cluster.stream_reader import StreamReader
from llmsup.supervisor.core import model_facts, model_name
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.driver import EngineDriver
from llmsup.supervisor.core.engine_state import Engine, EngineState, move
from llmsup.supervisor.core.events import EventHub, Subscription
from llmsup.supervisor.core.host_side import Host
from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.core.now import Now
from llmsup.supervisor.core.owner import SupervisorCore
from llmsup.supervisor.core.parts import Hooks
from llmsup.supervisor.core.pool import EnginePool
from llmsup.supervisor.core.requests import JobRequest, Submitted
from llmsup.supervisor.core.running import RunningJob
from llmsup.supervisor.core.start_failures import EngineStartFailed
from llmsup.supervisor.metrics.prometheus import Metrics
from llmsup.supervisor.pipelines.runner import PipelineRunner
from llmsup.supervisor.pipelines.store import MemoryPipelineStore, SQLitePipelineStore
from llmsup.supervisor.settings import Settings
from llmsup.supervisor.store import JobStore, SQLiteStore, retention
from llmsup.supervisor.store.protocol import PageReader

log = logging.getLogger("llmsup.supervisor")
DISPATCH_BATCH = 8  # jobs started per turn of the dispatch loop


@dataclass
class Wires:
    """llmsup's own channels to engines and join agents, made at start (a ZeroMQ context and its sockets)."""

    context: zmq.asyncio.Context
    keys: ChannelKeys
    gate: ChannelGate
    stream: StreamReader
    control: ControlChannel

    def close(self) -> None:
        for sock in (self.stream, self.control, self.gate):
            sock.close()
        self.context.term()


class Supervisor:
    def __init__(self, settings: Settings, store: JobStore | None = None, clock: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock  # wall, for records
        self.mono = mono  # monotonic, for deadlines, the ladder, beats
        self.core = SupervisorCore(settings, store, hooks=Hooks(self._wake_dispatch, self._wake_timers,
                                                                  self._on_settled))
        self.pool: EnginePool = self.core.pool
        self.hub: EventHub = self.core.hub
        self.metrics: Metrics = self.core.metrics
        self.ledger = ProcessLedger(settings.ledger_path)
        self.cluster = ClusterManager(settings, self.ledger)
        self._waiters: dict[str, list[asyncio.Future[Job]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._timers_changed = asyncio.Event()
        self._owns_run_dir = False
        self.started = False
        self.stream_address = ""
        self.wires: Wires | None = None  # made at start
        self.pipelines = PipelineRunner(self, MemoryPipelineStore(), wake=self._wake_timers)

    def now(self) -> Now:
        """This moment, as the core takes it."""
        return Now(self.mono(), self.clock())

    # the core's state, as callers read it ---------------------------------------------
    @property
    def store(self) -> JobStore:
        return self.core.store

    @property
    def driver(self) -> EngineDriver:
        return self.core.driver

    @property
    def stopping(self) -> bool:
        return self.core.stopping

    @property
    def hosts(self) -> dict[str, Host]:
        return self.core.hosts

    # the core's operations, at this moment --------------------------------------------
    def submit(self, req: JobRequest) -> Submitted:
        return self.core.submit(req, self.now())

    def submit_many(self, reqs: builtins.list[JobRequest]) -> builtins.list[Submitted]:
        return self.core.submit_many(reqs, self.now())

    async def committed(self) -> None:
        if isinstance(self.core.store_or_none, SQLiteStore):
            await self.core.store_or_none.committed()

    def get(self, job_id: str) -> Job:
        return self.core.get(job_id)

    def list(self, statuses: builtins.list[JobStatus] | None = None, owner: str | None = None, limit: int = 100,
             offset: int = 0) -> builtins.list[Job]:
        return self.core.list(statuses, owner, limit, offset)

    def cancel(self, job_id: str, note: str = "cancelled by user") -> Job:
        return self.core.cancel(job_id, self.now(), note)

    def kill(self, job_id: str) -> Job:
        return self.core.kill(job_id, self.now())

    def running_job(self, job_id: str) -> RunningJob | None:
        return self.core.running_job(job_id)

    def report(self, event: ev.Report) -> None:
        """The drivers' sink: the event, at the moment it is handled."""
        self.core.report(event, self.now())

    def expected_engines(self) -> int:
        return self.core.expected_engines()

    def engine_views(self) -> builtins.list[dict[str, Any]]:
        """As the admin API shows them, with ``local`` (on this host) and ``started_at`` (wall clock)."""
        views = self.core.engine_views(self.now())
        for view in views:
            engine = self.pool.get(view["id"])
            view["local"] = engine is not None and self.driver.is_local(engine)
            view["started_at"] = engine.started_at if engine is not None else 0.0
        return views

    def engine_view(self, engine_id: int) -> dict[str, Any]:
        engine = self.find_engine(engine_id)
        return next(v for v in self.engine_views() if v["id"] == engine.id)

    def starting_engines(self) -> builtins.list[tuple[str, str]]:
        return [(launch.set_id, launch.gpu) for launch in sorted(self.pool.launches.values(), key=lambda x: x.set_id)]

    def serving_engines(self) -> int:
        return len(self.pool.serving())

    def model_facts(self, pool: str | None = None) -> builtins.list[dict[str, Any]]:
        return model_facts.pool_facts(self.settings, self.pool, self.driver.is_local, pool)

    def served_model_name(self) -> str:
        return next(iter(self.served_pools()))  # the first model pool's first name

    def served_model_names(self) -> builtins.list[str]:
        return model_name.served_model_names(self.settings, self.pool.engines.values())

    def served_pools(self) -> dict[str, str]:
        return model_name.served_pools(self.settings, self.pool.engines.values())

    def count(self, status: JobStatus) -> int:
        return self.store.count(status)

    def page_reader(self) -> PageReader | None:
        return self.store.reader()

    def subscribe(self, job_id: str | None = None) -> Subscription:
        return self.hub.subscribe(job_id)

    async def prune_forever(self) -> None:
        await retention.prune_forever(self.store, self.settings, self.clock)

    def host_views(self) -> builtins.list[dict[str, Any]]:
        return self.core.host_views(self.now())

    def find_engine(self, engine_id: int) -> Engine:
        return self.core.find_engine(engine_id)

    def interrupt_engine(self, engine_id: int) -> builtins.list[str]:
        return self.core.interrupt_engine(engine_id, self.now())

    def restart_engine(self, engine_id: int) -> builtins.list[str]:
        return self.core.restart_engine(engine_id, self.now())

    def drain_engine(self, engine_id: int, drain: bool = True) -> None:
        self.core.drain_engine(engine_id, drain)

    def revoke_host(self, host: str) -> dict[str, Any]:
        return self.core.revoke_host(host, self.now())

    def update_gauges(self) -> None:
        self.core.update_gauges(self.now())

    # hooks of the core ---------------------------------------------------------------
    def _wake_dispatch(self) -> None:
        self._wake.set()

    def _wake_timers(self) -> None:
        self._timers_changed.set()

    def _on_settled(self, job: Job) -> None:
        for fut in self._waiters.pop(job.id, []):
            if not fut.done():
                fut.set_result(job)
        if job.pipeline is not None:  # its pipeline goes on after this settlement is done, not inside it
            asyncio.get_running_loop().call_soon(lambda: self.pipelines.on_job_settled(job, self.clock()))

    # lifecycle -------------------------------------------------------------------------
    async def start(self, wait_for_engines: bool = True) -> None:
        """Start everything; if any step fails, whatever was started is stopped before the error propagates."""
        try:
            await self._start_all(wait_for_engines)
        except BaseException:
            await self.stop()
            raise

    async def _start_all(self, wait_for_engines: bool) -> None:
        s = self.settings
        s.run_dir.mkdir(parents=True, exist_ok=True)
        self.ledger.claim()  # refuses a run directory a live supervisor owns
        self._owns_run_dir = True
        if not self.core.has_store:
            self.core.store = SQLiteStore(s.db_path)
        if isinstance(self.core.store, SQLiteStore):  # a loop turn's writes in one transaction
            self.core.store.group_commits(asyncio.get_running_loop().call_soon)
        self.core.recover(self.now())
        if isinstance(self.core.store, SQLiteStore):
            self.pipelines.store = SQLitePipelineStore(s.run_dir / runfiles.PIPELINE_STORE)
        self.pipelines.recover(self.clock())
        feeds = await self._start_driver()
        for name, loop in (*feeds, ("dispatch", self._dispatch_loop), ("timers", self._timer_loop),
                           ("health", self._health_loop)):
            self._spawn(self._supervised(name, loop))
        self.core.start_engines(s.engines, self.now())
        self.started = True
        if wait_for_engines:
            await self.wait_for_engines(self.expected_engines(), s.engine_start_timeout_s)
        log.info("supervisor ready: %d engines, backend %s", len(self.pool.serving()),
                 self.core.engine_config["backend"])

    async def _start_driver(self) -> builtins.list[tuple[str, Callable[[], Awaitable[None]]]]:
        """llmsup's channels, the IPyParallel cluster and its driver; returns the loops that read the channels."""
        s = self.settings
        wires = self.wires = _make_wires(s, self.on_stream_event, self.metrics, self.sent_by_its_engine)
        self.stream_address = wires.stream.address
        self.cluster.channels = Channels(self.stream_address, wires.control.address, wires.keys)
        await self.cluster.start()
        driver = ClusterDriver(s, self.cluster, self.ledger, self.report, wires.control, wires.gate,
                               lambda reason: self.metrics.refused_peers.labels(reason).inc())
        self.core.driver = driver
        self.core.configure_engines(dict(s.for_engines(), stream_address=self.stream_address,
                                         channel_keys=wires.keys.for_clients()),
                                    placement.visible_gpus() if self.cluster.local else 0)
        return [("token stream", wires.stream.run),
                ("control channel", lambda: wires.control.receive(driver.on_hello, driver.on_host, driver.on_enrol))]

    async def wait_for_engines(self, n: int, timeout: float) -> None:
        """Until ``n`` engines serve; ``TimeoutError`` once ``timeout`` has passed since the start and since the
        latest start progress of any engine (a model still downloading keeps the wait going);
        ``EngineStartFailed`` when no engine can load the model (``core/start_failures.py``)."""
        start = self.mono()
        while len(self.pool.serving()) < n:
            error = self.core.start_give_up(n)
            if error is not None:
                raise EngineStartFailed(error)
            if self.mono() - max(start, self.core.last_engine_progress) > timeout:
                raise TimeoutError(f"only {len(self.pool.serving())} of {n} engines ready after {timeout}s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop every process this supervisor started; safe after a partial start."""
        if self.core.stopping:
            return
        self.core.stopping = True
        busy = self.core.requeue_all("supervisor stopped", self.now()) if self.core.has_store else set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.driver.stop(list(self.pool), busy)
        for engine in self.pool:
            move(engine, EngineState.DEAD, "supervisor stopped")
        await self.cluster.stop()
        if self._owns_run_dir:
            self.ledger.sweep()  # kill anything the cluster failed to stop
            self.ledger.release()
        if self.wires is not None:
            self.wires.close()
            self.wires = None
        self.hub.close_all()
        self.pipelines.hub.close_all()
        self.pipelines.store.close()
        if self.core.has_store:
            self.store.close()

    def ready(self) -> bool:
        return self.started and self.core.ready()

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        job = self.get(job_id)
        if job.status.terminal:
            return job
        fut: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(fut)
        try:
            return await within(asyncio.shield(fut), timeout)
        finally:
            waiters = self._waiters.get(job_id, [])
            if fut in waiters:
                waiters.remove(fut)

    # loops ---------------------------------------------------------------------------------
    async def _supervised(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a loop for the supervisor's life: an unexpected error is logged and the loop restarted."""
        while not self.stopping:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # a loop of the supervisor must never die silently
                log.exception("%s loop failed; restarting it", name)
                self.metrics.loop_restarts.labels(name).inc()
                await asyncio.sleep(0.05)

    async def _dispatch_loop(self) -> None:
        while not self.stopping:
            self._wake.clear()
            started = 0
            try:  # a batch at a time: with many engines free at once, timers and reads get turns in between
                started = self.core.dispatch_ready(self.now(), limit=DISPATCH_BATCH)
            except Exception:  # dispatch must go on: log, and try again at the next wake-up
                log.exception("dispatch failed")
            if started == DISPATCH_BATCH:
                await asyncio.sleep(0)
            else:
                await _wait_event(self._wake, 0.25)

    async def _timer_loop(self) -> None:
        """Deadlines and ladder steps: the core's tick at its next wake-up."""
        while not self.stopping:
            self._timers_changed.clear()
            now = self.now()
            self.core.tick(now)
            due = self.pipelines.next_deadline()
            if due is not None and due <= now.wall:
                self.pipelines.tick(now.wall)
            wake = self.core.next_wakeup()
            delay = 0.25 if wake is None else min(0.25, max(0.0, wake - self.mono()))
            if delay > 0:
                await _wait_event(self._timers_changed, delay)

    async def _health_loop(self) -> None:
        period = max(0.05, self.settings.heartbeat_ms / 2000)
        while True:
            try:
                self.driver.poll()
                now = self.now()
                self.core.check_beats(now)
                self.core.check_hosts(now)
                self.core.reconcile(now)
                self.core.expire_queued(now)
                self.core.update_gauges(now)
            except Exception:  # one bad tick must not stop supervision
                log.exception("health tick failed")
            await asyncio.sleep(period)

    def sent_by_its_engine(self, event: StreamEvent, sender: str) -> bool:
        """A token stream message may come from this sender: an engine's own key, about that engine (its beat) or a
        job running on it. A job the core does not know is let through: the core drops it (late, or stale)."""
        engine_id = engine_of(sender)
        if engine_id is None:  # the join file's key, or an agent's: nothing of theirs travels on the stream
            return False
        if self.wires is not None and not self.wires.gate.admits(sender):  # revoked: its old connection still delivers
            return False
        if isinstance(event, wire.EngineBeat):
            return event.engine_id == engine_id
        run = self.core.job_side.by_key(event.key)
        return run is None or run.engine.id == engine_id

    def on_stream_event(self, event: StreamEvent) -> None:
        """One message of the engines' token stream (decoded by the StreamReader), reported to the core."""
        if isinstance(event, wire.EngineBeat):
            self.report(ev.EngineBeat(event.engine_id, event.rss_mb, event.gpu_mem_mb))
        elif isinstance(event, wire.TaskStarted):
            self.report(ev.TaskStarted(event.key))
        elif isinstance(event, wire.TokenPiece):
            self.report(ev.TokenPiece(event.key, event.seq, event.text, event.token_id, event.logprob))
        elif isinstance(event, wire.JobDone):
            self.report(ev.JobReply(event.key, result=event.result))

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _make_wires(s: Settings, on_event: Callable[[StreamEvent], None], metrics: Metrics,
                check: Callable[[StreamEvent, str], bool]) -> Wires:
    """llmsup's channels: CURVE, and only peers with known keys (each engine's own, the join agents') get in."""
    context = zmq.asyncio.Context()
    keys = ChannelKeys.generate()
    bind, advertise = listen_addresses(s)
    gate = ChannelGate(context, keys, metrics.refused_peers.labels("unknown_key").inc)
    return Wires(context, keys, gate, StreamReader(context, bind, on_event, metrics, keys, advertise, check=check),
                 ControlChannel(context, bind, metrics, keys, advertise, gate=gate))


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    try:
        await within(event.wait(), timeout)
    except TimeoutError:
        pass
