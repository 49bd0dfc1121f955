"""The supervisor: accepts jobs, dispatches them to engines, settles their outcomes.

All state changes happen on one asyncio loop. Every transition is written to
the store before it is acted on (a job is stored ``running`` before its task
is sent; it is stored terminal before anyone is told).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio
from llmsup.engines import runtime
from llmsup.supervisor import outcomes
from llmsup.supervisor.aio import within
from llmsup.supervisor.batching import ControlChannel
from llmsup.supervisor.cluster import ClusterManager
from llmsup.supervisor.engine_admin import EngineAdmin
from llmsup.supervisor.engine_manager import EngineManager
from llmsup.supervisor.events import EventHub
from llmsup.supervisor.jobs import Job, JobParams, JobStatus
from llmsup.supervisor.leftovers import ProcessLedger
from llmsup.supervisor.metrics import Metrics
from llmsup.supervisor.outcomes import Settlement
from llmsup.supervisor.pool import Engine, EnginePool, EngineState
from llmsup.supervisor.requests import InvalidRequest, JobNotFound, JobRequest, QueueFull, Submitted
from llmsup.supervisor.running import RunningJob
from llmsup.supervisor.settings import Settings
from llmsup.supervisor.store import DuplicateKey, JobStore, SQLiteStore
from llmsup.supervisor.transitions import transition
from llmsup.supervisor.watchdog import Watchdog

log = logging.getLogger("llmsup.supervisor")
Q, R = JobStatus.QUEUED, JobStatus.RUNNING


class Supervisor(EngineAdmin):
    def __init__(self, settings: Settings, store: JobStore | None = None, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.clock = clock
        self._store = store
        self.pool = EnginePool()
        self.hub = EventHub()
        self.metrics = Metrics()
        self.ledger = ProcessLedger(settings.run_dir / "processes.json")
        self.cluster = ClusterManager(settings, self.ledger)
        self._running: dict[str, RunningJob] = {}  # job id -> live handle
        self._by_stream_key: dict[str, RunningJob] = {}
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._owns_run_dir = False
        self.started = False
        self.stream_address = ""

    @property
    def store(self) -> JobStore:
        assert self._store is not None, "supervisor not started"
        return self._store

    # lifecycle -------------------------------------------------------------------
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
        if self._store is None:
            self._store = SQLiteStore(s.db_path)
        self.recover(self.clock())
        self._zmq = zmq.asyncio.Context()
        self._pull = self._zmq.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, 0)
        port = self._pull.bind_to_random_port(s.stream_bind)
        self.stream_address = f"{s.stream_bind}:{port}"
        self.control = ControlChannel(self._zmq, s.stream_bind)
        await self.cluster.start()
        engine_config = dict(s.for_engines(), stream_address=self.stream_address)
        self.engines = EngineManager(
            s, self.cluster, self.pool, self.ledger, self.metrics, engine_config,
            on_ready=lambda engine: self._wake.set(), on_lost=self._on_engine_lost, control=self.control,
        )
        self.watchdog = Watchdog(
            s, self.cluster, self.metrics, self._settle_lost_reply, self.engines.kill_and_replace,
            self.engines.local_key, send_abort=self._send_abort,
        )
        for coro in (self._token_loop(), self._dispatch_loop(), self._health_loop(),
                     self.control.receive(self._on_hello)):
            self._spawn(coro)
        await self.engines.start(s.engines)
        self.started = True
        if wait_for_engines:
            await self.wait_for_engines(self.engines.expected(), s.engine_start_timeout_s)
        log.info("supervisor ready: %d engines, backend %s", len(self.pool.serving()), engine_config["backend"])

    async def wait_for_engines(self, n: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while len(self.pool.serving()) < n:
            if time.monotonic() > end:
                raise TimeoutError(f"only {len(self.pool.serving())} of {n} engines ready after {timeout}s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop every process this supervisor started; safe after a partial start."""
        if self._stopping:
            return
        self._stopping = True
        now = self.clock()
        busy = {run.engine.id for run in self._running.values()}
        for run in list(self._running.values()):
            # at-least-once: whatever was running goes back to the queue (the attempt is counted)
            self._settle(run, Settlement(Q, requeue_reason="supervisor stopped"), now=now)
        if hasattr(self, "engines"):
            await self.engines.stop(busy)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.cluster.stop()
        if self._owns_run_dir:
            self.ledger.claim()  # kill anything the cluster failed to stop
            self.ledger.release()
        for sock in (getattr(self, "_pull", None), getattr(self, "control", None)):
            if sock is not None:
                sock.close()
        if hasattr(self, "_zmq"):
            self._zmq.term()
        self.hub.close_all()
        if self._store is not None:
            self._store.close()

    def recover(self, now: float) -> None:
        """After a restart: queued jobs stay queued; jobs that were running are re-queued."""
        for job in self.store.list([R], limit=1_000_000):
            if job.attempts >= self.settings.max_attempts:
                new = transition(job, JobStatus.FAILED, now, error="supervisor restarted while running; out of attempts")
            else:
                new = transition(job, Q, now, error="re-queued: supervisor restarted while it was running")
            self.store.put(new)
            log.warning("recovered job=%s: %s", job.id, new.status.value)

    # public API ----------------------------------------------------------------------
    def submit(self, req: JobRequest) -> Submitted:
        """Validate and queue a job; a repeated idempotency key returns the job it created."""
        s = self.settings
        if not req.prompt:
            raise InvalidRequest("prompt must not be empty")
        if len(req.prompt) > s.max_prompt_chars:
            raise InvalidRequest(f"prompt longer than {s.max_prompt_chars} characters")
        deadline = req.deadline_s if req.deadline_s is not None else s.deadline_s
        if not 0 < deadline <= s.max_deadline_s:
            raise InvalidRequest(f"deadline_s must be in (0, {s.max_deadline_s}]")
        max_tokens = req.max_tokens if req.max_tokens is not None else s.default_max_tokens
        if not 1 <= max_tokens <= s.max_tokens_limit:
            raise InvalidRequest(f"max_tokens must be in [1, {s.max_tokens_limit}]")
        try:
            params = JobParams.from_dict(
                {**req.extra, "max_tokens": max_tokens, "temperature": req.temperature, "stop": req.stop}
            )
        except TypeError as exc:
            raise InvalidRequest(str(exc)) from None
        if req.idempotency_key is not None:
            existing = self.store.by_key(req.idempotency_key, req.owner)
            if existing is not None:
                return Submitted(self._view(existing), created=False)
        if self.store.count(Q) >= s.queue_max:
            raise QueueFull(s.queue_max, retry_after_s=max(1.0, deadline / 4))
        if req.owner is not None and s.owner_queue_max and self.store.count_owned(Q, req.owner) >= s.owner_queue_max:
            raise QueueFull(s.owner_queue_max, retry_after_s=max(1.0, deadline / 4), owner=req.owner)
        job = Job(
            prompt=req.prompt, params=params, deadline_s=deadline,
            queue_timeout_s=req.queue_timeout_s or s.queue_timeout_s, priority=req.priority,
            idempotency_key=req.idempotency_key, owner=req.owner, created_at=self.clock(),
        )
        try:
            job = self.store.add(job)
        except DuplicateKey as dup:
            return Submitted(self._view(dup.existing), created=False)
        self.metrics.jobs_submitted.inc()
        self._publish_status(job)
        self._wake.set()
        return Submitted(job, created=True)

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return self._view(job)

    def list(self, statuses: list[JobStatus] | None = None, owner: str | None = None, limit: int = 100,
             offset: int = 0) -> list[Job]:
        return [self._view(j) for j in self.store.list(statuses, owner=owner, limit=limit, offset=offset)]

    def cancel(self, job_id: str, note: str = "cancelled by user") -> Job:
        """Cancel a job: a queued one at once, a running one through the escalation ladder."""
        job = self.get(job_id)
        if job.status is Q:
            new = transition(job, JobStatus.CANCELLED, self.clock(), error=note)
            self.store.put(new)
            self._finished(new)
            return new
        run = self._running.get(job_id)
        if run is not None:
            run.cancel_note = note
            self.watchdog.interrupt(run, JobStatus.CANCELLED)
        return job

    def kill(self, job_id: str) -> Job:
        return self.cancel(job_id, note="killed by admin")

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        job = self.get(job_id)
        if job.status.terminal:
            return job
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(fut)
        try:
            return await within(asyncio.shield(fut), timeout)
        finally:
            waiters = self._waiters.get(job_id, [])
            if fut in waiters:
                waiters.remove(fut)

    def ready(self) -> bool:
        return self.started and bool(self.pool.serving() or any(e.jobs for e in self.pool))

    # dispatch ----------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                self.dispatch_ready(self.clock())
            except Exception:  # dispatch must go on: log, and try again at the next wake-up
                log.exception("dispatch failed")
            try:
                await within(self._wake.wait(), 0.25)
            except TimeoutError:
                pass

    def dispatch_ready(self, now: float) -> int:
        """Start as many ready jobs as there are free slots; returns how many started."""
        free = self.pool.free_slots()
        if free <= 0 or self._stopping:
            return 0
        started = 0
        for job in self.store.next_queued(now, free):
            engine = self.pool.pick(job.lost_engines)
            if engine is None:
                break
            self._start(job, engine, now)
            started += 1
        return started

    def _start(self, job: Job, engine: Engine, now: float) -> None:
        job = transition(job, R, now, engine=engine.ref, error=None)
        self.store.put(job)  # stored as running before the task is sent
        mono = time.monotonic()
        run = RunningJob(job, engine, mono)
        self._running[job.id] = run
        self._by_stream_key[run.key] = run
        engine.jobs[job.id] = mono
        engine.refresh_state()
        self.metrics.queue_wait.observe(max(0.0, now - job.created_at))
        spec = {"job_id": run.key, "prompt": job.prompt, "params": _params_dict(job.params)}
        loop = asyncio.get_running_loop()
        if engine.batched:
            run.future = loop.create_future()  # resolved by the engine's "done" message
            msg = {"op": "submit", "key": run.key, "prompt": job.prompt, "params": spec["params"],
                   "deadline_s": job.deadline_s}
            if not self.control.send(engine.id, msg):
                run.future.set_exception(outcomes.DispatchFailed(f"engine {engine.id} not reachable on its control channel"))
        else:
            try:
                run.future = asyncio.wrap_future(self.cluster.apply(engine.id, runtime.run_job, spec))
            except Exception as exc:  # the engine left the cluster before we noticed: the job goes back
                run.future = loop.create_future()
                run.future.set_exception(outcomes.DispatchFailed(f"engine {engine.id} gone at dispatch: {exc}"))
        run.future.add_done_callback(lambda fut, run=run: self._on_done(run, fut))
        run.deadline_timer = loop.call_later(job.deadline_s, self.watchdog.interrupt, run, JobStatus.TIMED_OUT)
        self._publish_status(job)

    # outcomes ----------------------------------------------------------------------
    def _on_done(self, run: RunningJob, fut: asyncio.Future) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if run.settled.is_set():
            return
        max_attempts = self.settings.max_attempts
        if exc is not None:
            if isinstance(exc, outcomes.DispatchFailed):  # never reached the engine: not an attempt
                settlement = outcomes.lost(run, str(exc), max_attempts, charge=False)
            else:
                settlement = outcomes.from_exception(exc, run, max_attempts)
        else:
            result: dict[str, Any] = fut.result()
            run.engine.rss_mb = result.get("rss_mb", run.engine.rss_mb)
            settlement = outcomes.from_result(result, run, max_attempts)
        if settlement.engine_lost and run.engine.state not in (EngineState.RESTARTING, EngineState.DEAD):
            self._spawn(self.engines.handle_lost(run.engine, f"engine lost running job {run.job.id}"))
        self._settle(run, settlement)

    def _settle_lost_reply(self, run: RunningJob) -> None:
        self._settle(run, outcomes.partial(run, run.interrupt_reason or JobStatus.CANCELLED, "; reply lost"))

    def _send_abort(self, run: RunningJob) -> None:
        self.control.send(run.engine.id, {"op": "abort", "key": run.key, "reason": "cancelled"})

    def _on_hello(self, engine_id: int, msg: dict[str, Any]) -> None:
        engine = self.pool.get(engine_id)
        if engine is not None and engine.batched:
            self.engines.mark_ready(engine)

    def _on_engine_lost(self, engine: Engine, why: str, killed: bool) -> None:
        """Settle every job the engine held: due ones with their partial output, the others back to the queue."""
        now = time.monotonic()
        for job_id in list(engine.jobs):
            run = self._running.get(job_id)
            if run is None:
                continue
            overdue = now - run.started_mono >= run.job.deadline_s
            if run.killed or (killed and (run.interrupt_reason is not None or overdue)):
                run.killed = True
                self._settle(run, outcomes.partial(run, run.interrupt_reason or JobStatus.TIMED_OUT))
            else:
                # a batch neighbour of a job the watchdog had to kill is not charged an attempt
                self._settle(run, outcomes.lost(run, why, self.settings.max_attempts, charge=not killed))

    def _settle(self, run: RunningJob, st: Settlement, now: float | None = None) -> None:
        """The one place a running job's record changes: stored first, then acted on."""
        if run.settled.is_set():
            return
        now = self.clock() if now is None else now
        job = run.job
        if st.status is Q:
            backoff = self.settings.retry_backoff_s * (2 ** max(0, job.attempts - 1)) if st.charge_attempt else 0.0
            lost = job.lost_engines + ((run.engine.id,) if st.engine_lost else ())
            attempts = job.attempts if st.charge_attempt else job.attempts - 1
            new = transition(job, Q, now, not_before=now + backoff, error=st.requeue_reason, lost_engines=lost,
                             attempts=attempts)
            self.metrics.requeues.labels("engine_lost" if st.engine_lost else "other").inc()
            asyncio.get_running_loop().call_later(backoff, self._wake.set)
        else:
            finish_reason = st.finish_reason
            if st.status is JobStatus.TIMED_OUT:
                finish_reason = "deadline"
            elif st.status is JobStatus.CANCELLED:
                finish_reason = "cancelled"
            new = transition(job, st.status, now, output=st.text, tokens=st.tokens, error=st.error,
                             finish_reason=finish_reason, prompt_tokens=st.prompt_tokens)
        self.store.put(new)  # written before anyone is told
        run.settled.set()
        if run.deadline_timer is not None:
            run.deadline_timer.cancel()
        self._running.pop(job.id, None)
        self._by_stream_key.pop(run.key, None)
        engine = run.engine
        engine.jobs.pop(job.id, None)
        mono = time.monotonic()
        self.metrics.run_time.observe(mono - run.started_mono)
        if run.interrupt_mono is not None:
            self.metrics.interrupt_latency.observe(mono - run.interrupt_mono)
        if run.first_token_mono is not None:
            self.metrics.ttft.observe(run.first_token_mono - run.started_mono)
        self.metrics.tokens.inc(st.tokens)
        if engine.state is EngineState.INTERRUPTING and not any(
            self._running[j].interrupt_reason for j in engine.jobs if j in self._running
        ):
            engine.state = EngineState.BUSY
        if engine.state in (EngineState.IDLE, EngineState.BUSY, EngineState.DRAINING):
            engine.jobs_done += 1
            engine.refresh_state()
            self._maybe_recycle(engine)
        self._finished(new)
        self._wake.set()

    def _maybe_recycle(self, engine: Engine) -> None:
        """Recycle between jobs (a busy batched engine drains first, then recycles when empty)."""
        s = self.settings
        if self._stopping:
            return
        why = None
        if s.max_jobs_per_engine and engine.jobs_done >= s.max_jobs_per_engine:
            why = f"{engine.jobs_done} jobs done (max_jobs_per_engine={s.max_jobs_per_engine})"
        elif s.max_engine_rss_mb and engine.rss_mb > s.max_engine_rss_mb:
            why = f"RSS {engine.rss_mb:.0f} MB > max_engine_rss_mb={s.max_engine_rss_mb:.0f}"
        if why is None:
            return
        if engine.jobs:
            engine.state = EngineState.DRAINING
            return
        engine.state = EngineState.RESTARTING
        self._spawn(self.engines.recycle(engine, why))

    def _finished(self, job: Job) -> None:
        self._publish_status(job)
        if job.status.terminal:
            self.metrics.job_outcomes.labels(job.status.value).inc()
            for fut in self._waiters.pop(job.id, []):
                if not fut.done():
                    fut.set_result(job)

    # background loops ----------------------------------------------------------------
    async def _token_loop(self) -> None:
        """Engines' token stream: [key, seq, text] pieces; [key, "done", result]; ["", "beat", info]."""
        while True:
            frames = await self._pull.recv_multipart()
            try:
                self._on_stream_message(frames)
            except (ValueError, UnicodeDecodeError) as exc:  # a malformed message must not stop the stream
                log.warning("bad message on the token stream: %s", exc)

    def _on_stream_message(self, frames: list[bytes]) -> None:
        if len(frames) == 3:
            key, kind, payload = frames
            if not key:
                if kind == b"beat":
                    self._on_beat(payload)
                return
            run = self._by_stream_key.get(key.decode())
            if run is None:
                return
            if kind == b"start":
                run.task_started.set()
            elif kind == b"done":
                if run.future is not None and not run.future.done():
                    run.future.set_result(json.loads(payload))
            elif run.add_piece(int(kind), payload.decode(), time.monotonic()):
                self.hub.publish(run.job.id, {"type": "token", "job_id": run.job.id, "seq": int(kind),
                                              "text": payload.decode()})

    def _on_beat(self, payload: bytes) -> None:
        info = json.loads(payload)
        engine = self.pool.get(int(info.get("engine_id", -1)))
        if engine is not None:
            engine.last_beat = time.monotonic()
            engine.rss_mb = info.get("rss_mb", engine.rss_mb)

    async def _health_loop(self) -> None:
        period = max(0.05, self.settings.heartbeat_ms / 2000)
        while True:
            try:
                self.engines.poll()
                self.expire_queued(self.clock())
                self._update_gauges()
            except Exception:  # one bad tick must not stop supervision
                log.exception("health tick failed")
            await asyncio.sleep(period)

    def expire_queued(self, now: float) -> int:
        """Queued jobs that waited past their queue timeout end ``expired``."""
        expired = 0
        for job in self.store.expired(now, limit=1000):
            new = transition(job, JobStatus.EXPIRED, now, error=f"waited more than {job.queue_timeout_s}s in the queue")
            self.store.put(new)
            self._finished(new)
            expired += 1
        return expired

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(self.store.count(Q))  # indexed: this runs every health tick
        self.metrics.running.set(len(self._running))
        for state in EngineState:
            self.metrics.engines.labels(state.value).set(sum(1 for e in self.pool if e.state is state))

    # helpers -----------------------------------------------------------------------
    def _view(self, job: Job) -> Job:
        run = self._running.get(job.id)
        if run is not None and job.status is R:
            return job.with_changes(output=run.text, tokens=len(run.pieces))
        return job

    def _publish_status(self, job: Job) -> None:
        self.hub.publish(job.id, {"type": "status", "job_id": job.id, "status": job.status.value})

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _params_dict(params: JobParams) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.__dict__.items()}
