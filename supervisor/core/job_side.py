"""The supervisor core's job side: the queue, dispatch, the deadlines and the ladder's steps, and settling a job.

A part of :class:`~llmsup.supervisor.core.owner.SupervisorCore`. Every job transition is written to the store before
it is acted on. Decisions take the moment they act at (``now``: monotonic for deadlines and the ladder, wall for
records) from the caller.
"""

from __future__ import annotations

import builtins  # the method `list` shadows the builtin in the class body
import heapq
import itertools
import logging
from collections import Counter
from collections.abc import Iterator

from llmsup.engines.messages import JobResult, JobSpec
from llmsup.supervisor.core import joblog, ladder, outcomes
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.engine_state import Engine, EngineState, after_jobs_change, move
from llmsup.supervisor.core.jobs import EngineRef, Job, JobParams, JobStatus
from llmsup.supervisor.core.model_name import pool_named
from llmsup.supervisor.core.now import Now
from llmsup.supervisor.core.outcomes import Settlement
from llmsup.supervisor.core.parts import EnginesPort, Shared
from llmsup.supervisor.core.requests import (
    InvalidRequest,
    JobNotFound,
    JobRequest,
    PoolNotFound,
    QueueFull,
    Submitted,
    check_limits,
)
from llmsup.supervisor.core.running import RunningJob
from llmsup.supervisor.core.transitions import transition
from llmsup.supervisor.settings_jobs import NATIVE_DEADLINE_S
from llmsup.supervisor.store import DuplicateKey, JobStore

log = logging.getLogger("llmsup.supervisor")
QUEUE_LOOKAHEAD = 256  # with several pools: queued jobs looked at beyond the free slots (others' may be ahead)
Q, R = JobStatus.QUEUED, JobStatus.RUNNING


class JobSide:
    engines: EnginesPort  # set by the core once every part exists

    def __init__(self, shared: Shared, store: JobStore | None) -> None:
        self.shared = shared
        self.settings = shared.settings
        self.metrics = shared.metrics
        self.grace = ladder.Grace(shared.settings.interrupt_grace_s, shared.settings.kill_grace_s)
        self.store_or_none = store
        self._running: dict[str, RunningJob] = {}  # job id -> live handle
        self._by_key: dict[str, RunningJob] = {}  # stream key -> live handle
        self._timers: list[tuple[float, int, str]] = []  # (when, seq, job id): deadlines and ladder wake-ups
        self._timer_seq = itertools.count()
        self._dispatch_serial = itertools.count(1)  # part of each dispatch's stream key: never used twice
        self._queued_pool: dict[str, str] = {}  # queued job id -> its pool (the per-pool gauges)

    @property
    def store(self) -> JobStore:
        assert self.store_or_none is not None, "supervisor not started"
        return self.store_or_none

    def running(self, job_id: str) -> RunningJob | None:
        return self._running.get(job_id)

    def running_count(self) -> int:
        return len(self._running)

    def by_key(self, key: str) -> RunningJob | None:
        return self._by_key.get(key)

    def pool_counts(self) -> tuple[Counter[str], Counter[str]]:
        """(queued, running) jobs per pool."""
        return Counter(self._queued_pool.values()), Counter(run.job.pool for run in self._running.values())

    def _put(self, job: Job) -> None:
        """Store a job's new state (the queued jobs' pools follow)."""
        self.store.put(job)
        if job.status is Q:
            self._queued_pool[job.id] = job.pool
        else:
            self._queued_pool.pop(job.id, None)

    # jobs: the public API ---------------------------------------------------------------
    def recover(self, now: Now) -> None:
        """After a restart: queued jobs stay queued; jobs that were running are re-queued."""
        self._queued_pool = {job.id: job.pool for job in self.store.list([Q], limit=1_000_000)}
        for job in self.store.list([R], limit=1_000_000):
            if job.attempts >= self.settings.max_attempts:
                new = transition(job, JobStatus.FAILED, now.wall,
                                 error="supervisor restarted while running; out of attempts")
            else:
                new = transition(job, Q, now.wall, error="re-queued: supervisor restarted while it was running")
            self._put(new)
            log.warning("recovered job=%s: %s", job.id, new.status.value)

    def submit(self, req: JobRequest, now: Now) -> Submitted:
        """Validate and queue a job; a repeated idempotency key returns the job it created."""
        return self.submit_many([req], now)[0]

    def submit_many(self, reqs: builtins.list[JobRequest], now: Now) -> builtins.list[Submitted]:
        """Validate every request, then check the quotas once for all of them, then queue them: all or none
        (InvalidRequest names the request by its index when there are several)."""
        checked = [self._checked(req, i if len(reqs) > 1 else None) for i, req in enumerate(reqs)]
        out: dict[int, Submitted] = {}
        for i, req in enumerate(reqs):
            if req.idempotency_key is not None:
                existing = self.store.by_key(req.idempotency_key, req.owner)
                if existing is not None:
                    out[i] = Submitted(self.view(existing), created=False)
        self._check_quotas([req for i, req in enumerate(reqs) if i not in out],
                           max((NATIVE_DEADLINE_S if deadline is None else deadline for _, deadline, _, _ in checked),
                               default=4.0))
        for i, (req, deadline, params, pool) in enumerate(checked):
            if i not in out:
                out[i] = self._queue(req, deadline, params, pool, now)
        return [out[i] for i in range(len(reqs))]

    def _checked(self, req: JobRequest, index: int | None) -> tuple[JobRequest, float | None, JobParams, str]:
        try:
            deadline, params = self._validated(req)
        except InvalidRequest as exc:
            raise exc if index is None else InvalidRequest(f"jobs[{index}]: {exc}") from None
        pool = pool_named(self.settings, self.shared.pool.engines.values(), req.pool)
        if pool is None:
            raise PoolNotFound(str(req.pool), list(self.shared.pool_names))
        return req, deadline, params, pool

    def _check_quotas(self, new: builtins.list[JobRequest], deadline: float | None) -> None:
        """QueueFull unless ``new`` all fit in the queue and in each owner's share of it."""
        s = self.settings
        retry = max(1.0, (deadline if deadline is not None else NATIVE_DEADLINE_S) / 4)
        if new and self.store.count(Q) + len(new) > s.queue_max:
            raise QueueFull(s.queue_max, retry_after_s=retry)
        owners: dict[str, int] = {}
        for req in new:
            if req.owner is not None:
                owners[req.owner] = owners.get(req.owner, 0) + 1
        for owner, count in owners.items():
            if s.owner_queue_max and self.store.count_owned(Q, owner) + count > s.owner_queue_max:
                raise QueueFull(s.owner_queue_max, retry_after_s=retry, owner=owner)

    def _queue(self, req: JobRequest, deadline: float | None, params: JobParams, pool: str, now: Now) -> Submitted:
        s = self.settings
        job = Job(prompt=req.prompt, params=params, deadline_s=deadline,
                  queue_timeout_s=req.queue_timeout_s or s.queue_timeout_s, priority=req.priority,
                  idempotency_key=req.idempotency_key, owner=req.owner, created_at=now.wall, pipeline=req.pipeline,
                  affinity=EngineRef.from_dict(req.affinity), pool=pool)
        try:
            job = self.store.add(job)
        except DuplicateKey as dup:  # the same key twice in one batch
            return Submitted(self.view(dup.existing), created=False)
        self._queued_pool[job.id] = job.pool
        self.metrics.jobs_submitted.inc()
        joblog.submitted(job, s.max_log_len if s.enable_log_requests else -1)
        self._publish_status(job)
        self.shared.hooks.wake_dispatch()
        return Submitted(job, created=True)

    def _validated(self, req: JobRequest) -> tuple[float | None, JobParams]:
        """The request's deadline and sampling parameters, or InvalidRequest saying what is wrong."""
        max_tokens, deadline = check_limits(self.settings, req.prompt, req.max_tokens, req.deadline_s,
                                              req.unbounded)
        try:
            params = JobParams.from_dict({**req.extra, "max_tokens": max_tokens, "temperature": req.temperature,
                                          "stop": req.stop})
        except TypeError as exc:
            raise InvalidRequest(str(exc)) from None
        return deadline, params

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return self.view(job)

    def list(self, statuses: list[JobStatus] | None = None, owner: str | None = None, limit: int = 100,
             offset: int = 0) -> list[Job]:
        return [self.view(j) for j in self.store.list(statuses, owner=owner, limit=limit, offset=offset)]

    def cancel(self, job_id: str, now: Now, note: str = "cancelled by user") -> Job:
        """Cancel a job: a queued one at once, a running one through the escalation ladder."""
        job = self.get(job_id)
        if job.status is Q:
            new = transition(job, JobStatus.CANCELLED, now.wall, error=note)
            self._put(new)
            self._finished(new)
            return new
        run = self._running.get(job_id)
        if run is not None:
            run.cancel_note = note
            self.interrupt(run, JobStatus.CANCELLED, now)
        return job

    # dispatch ---------------------------------------------------------------------------
    def dispatch_ready(self, now: Now, limit: int | None = None) -> int:
        """Start as many ready jobs as there are free slots (at most ``limit``); returns how many started."""
        pool = self.shared.pool
        free = pool.free_slots() if limit is None else min(limit, pool.free_slots())
        if free <= 0 or self.shared.stopping:
            return 0
        started, full = 0, set()  # full: pools with no free slot left
        held: set[str] = set()  # jobs waiting for the busy engine they name
        several = len(self.shared.pool_names) > 1  # jobs of a full pool must not hold up the others'
        for job in self._queued(now, free, several, held):
            if job.pool in full:
                continue
            if job.affinity is not None and now.wall < job.created_at + self.settings.affinity_wait_s \
                    and pool.affinity_busy(job.affinity, job.pool):
                held.add(job.id)  # its engine may free a slot within the wait: the jobs behind it go first
                continue
            engine = pool.pick(job.lost_engines, job.affinity, job.pool)
            if engine is None:
                if not several:
                    break
                full.add(job.pool)
                continue
            self._start(job, engine, now)
            started += 1
            if started >= free:
                break
        return started

    def _queued(self, now: Now, free: int, several: bool, held: set[str]) -> Iterator[Job]:
        """The queued jobs to place, in order: ``free`` of them (several pools: a lookahead more), then, when some
        of those were held for their affinity engine, the ones behind them."""
        window = free + QUEUE_LOOKAHEAD if several else free
        first = self.store.next_queued(now.wall, window)
        yield from first
        if held and len(first) == window:
            yield from (j for j in self.store.next_queued(now.wall, window + QUEUE_LOOKAHEAD) if j.id not in held
                        and j.id not in self._running)

    def _start(self, job: Job, engine: Engine, now: Now) -> None:
        job = transition(job, R, now.wall, engine=engine.ref, error=None)
        self._put(job)  # stored as running before the task is sent
        run = RunningJob(job, engine, now.mono, serial=next(self._dispatch_serial))
        self._running[job.id] = run
        self._by_key[run.key] = run
        engine.jobs[job.id] = now.mono
        after_jobs_change(engine, f"job {job.id} dispatched")
        self.metrics.queue_wait.observe(max(0.0, job.started_at - job.created_at if job.started_at else 0.0))
        self._push_timer(run.due_at(self.settings.stall_timeout_s), job.id)
        joblog.dispatched(job, engine)
        self._publish_status(job)
        spec = JobSpec(run.key, job.prompt, job.params)
        driver = self.shared.driver
        if not self.shared.drive("dispatch", engine, lambda: driver.dispatch(engine, run.key, spec, job.deadline_s),
                                 job.id):
            self._on_reply(run, ev.JobReply(run.key, error=ev.TaskFailure("unreachable", "dispatch failed"),
                                            dispatched=False), now)

    # reports from drivers ------------------------------------------------------------------
    def on_job_event(self, run: RunningJob, event: ev.Report, now: Now) -> None:
        if isinstance(event, ev.TokenPiece):
            self._on_piece(run, event, now.mono)
        elif isinstance(event, ev.TaskStarted):
            run.task_started = True
            if run.escalation is not None:
                self._climb(run, *ladder.on_task_started(run.escalation, now.mono, self.grace), now)
        elif isinstance(event, ev.SigintDelivered):
            if run.escalation is not None:
                self._climb(run, *ladder.on_delivered(run.escalation, now.mono, self.grace), now)
        elif isinstance(event, ev.ProbeAnswered):
            if run.escalation is not None and run.escalation.rung is ladder.Rung.PROBING:
                self._ladder_log(run, "lost_reply", now.mono, "probe answered while the job's reply never came")
                self.settle(run, outcomes.partial(run, run.escalation.reason, "; reply lost"), now)
        elif isinstance(event, ev.JobReply):
            self._on_reply(run, event, now)

    def _on_piece(self, run: RunningJob, piece: ev.TokenPiece, now: float) -> None:
        previous = run.last_token_mono
        if run.add_piece(piece.seq, piece.text, now, piece.token_id, piece.logprob):
            self.metrics.token_piece(None if previous is None else now - previous, run.job.pool)
            if previous is None:
                joblog.first_token(run.job, run.engine, now - run.started_mono)
            self.shared.hub.publish(run.job.id, {"type": "token", "job_id": run.job.id, "seq": piece.seq,
                                                 "text": piece.text, "token_id": piece.token_id,
                                                 "logprob": piece.logprob})

    def _on_reply(self, run: RunningJob, reply: ev.JobReply, now: Now) -> None:
        max_attempts = self.settings.max_attempts
        if not reply.dispatched:  # never reached the engine: not an attempt
            settlement = outcomes.lost(run, reply.error.message if reply.error else "not dispatched", max_attempts,
                                       charge=False)
        elif reply.error is not None:
            settlement = outcomes.from_failure(reply.error, run, max_attempts)
            if settlement.error_detail is not None:  # an exception that escaped run_job
                self._log_engine_error(run, settlement.error, settlement.error_detail)
        else:
            result = reply.result or JobResult("error", error="the engine answered nothing")
            run.engine.rss_mb = result.rss_mb or run.engine.rss_mb
            run.engine.gpu_mem_mb = result.gpu_mem_mb if result.gpu_mem_mb is not None else run.engine.gpu_mem_mb
            if result.outcome == "error":
                self._log_engine_error(run, result.error, result.traceback)
            settlement = outcomes.from_result(result, run, max_attempts)
        engine = run.engine
        if settlement.engine_lost and engine.state not in (EngineState.RESTARTING, EngineState.DEAD):
            move(engine, EngineState.DEAD, f"lost running job {run.job.id}")  # first: nothing new, no recycle
            self.settle(run, settlement, now)
            self.engines.engine_lost(engine, settlement.requeue_reason or settlement.error or "engine lost", now)
        else:
            self.settle(run, settlement, now)

    def _log_engine_error(self, run: RunningJob, error: str | None, traceback: str | None) -> None:
        """The operator's one record of what failed on the engine, and where (the job keeps it for admins)."""
        log.error("job=%s failed on %s: %s%s", run.job.id, run.engine.tag(), error,
                  f"\n{traceback.rstrip()}" if traceback else "")

    # time: deadlines and the ladder ------------------------------------------------------------
    def _push_timer(self, when: float, job_id: str) -> None:
        if when == float("inf"):
            return  # no deadline and no stall limit: nothing to wake for
        heapq.heappush(self._timers, (when, next(self._timer_seq), job_id))
        self.shared.hooks.wake_timers()

    def next_wakeup(self) -> float | None:
        while self._timers and self._timers[0][2] not in self._running:
            heapq.heappop(self._timers)  # settled since
        return self._timers[0][0] if self._timers else None

    def tick(self, now: Now) -> None:
        """Act on every deadline and ladder step that is due at ``now``."""
        while self._timers and self._timers[0][0] <= now.mono:
            _, _, job_id = heapq.heappop(self._timers)
            run = self._running.get(job_id)
            if run is None or run.settled:
                continue
            try:
                if run.escalation is None:
                    self._check_time(run, now)
                elif now.mono >= run.escalation.wake_at:
                    self._climb(run, *ladder.due(run.escalation, now.mono, self.grace, run.engine.sigint_at), now)
            except Exception:  # a failed step must not stop the timers of every other job: retry it shortly
                log.exception("job=%s %s: ladder step failed", job_id, run.engine.tag())
                self.metrics.driver_errors.labels("ladder").inc()
                self._push_timer(now.mono + self.grace.interrupt_s, job_id)

    def _check_time(self, run: RunningJob, now: Now) -> None:
        """Its deadline passed, or it went the stall limit without a token: interrupted as timed out; else its
        next check (a token since moved its stall limit on)."""
        stall_s = self.settings.stall_timeout_s
        if now.mono >= run.deadline_at:
            self.interrupt(run, JobStatus.TIMED_OUT, now)
        elif now.mono >= run.stall_at(stall_s):
            run.stalled_s = stall_s
            log.warning("job=%s %s: no token for %gs: interrupted as a runaway", run.job.id, run.engine.tag(), stall_s)
            self.interrupt(run, JobStatus.TIMED_OUT, now)
        else:
            self._push_timer(run.due_at(stall_s), run.job.id)

    def interrupt(self, run: RunningJob, reason: JobStatus, now: Now) -> bool:
        """Start the ladder for this job; False if it is settled or already being interrupted."""
        if run.settled or run.escalation is not None:
            return False
        engine = run.engine
        if not engine.batched and engine.state is EngineState.BUSY:
            move(engine, EngineState.INTERRUPTING, f"job {run.job.id} {reason.value}")
        self.metrics.interrupt_asked(reason)
        self._climb(run, *ladder.ask(reason, engine.batched, run.task_started, now.mono, self.grace), now)
        return True

    def _climb(self, run: RunningJob, esc: ladder.Escalation, steps: builtins.list[ladder.Step], now: Now) -> None:
        """Carry out the ladder's steps for one job and keep its next wake-up."""
        previous, run.escalation = run.escalation, esc
        engine = run.engine
        driver, drive = self.shared.driver, self.shared.drive
        for step in steps:
            if step is ladder.Step.ABORT:
                drive("abort", engine, lambda: driver.abort(engine, run.key), run.job.id)
                continue
            if step is ladder.Step.SIGINT:
                if engine.batched:
                    engine.sigint_at = now.mono  # one SIGINT per episode, whatever the number of due jobs
                self._ladder_log(run, "sigint", now.mono, f"path={'batched' if engine.batched else 'engine'}")
                drive("sigint", engine, lambda: driver.sigint(engine, run.key), run.job.id)
            elif step is ladder.Step.PROBE:
                self._ladder_log(run, "probe", now.mono)
                drive("probe", engine, lambda: driver.probe(engine, run.key), run.job.id)
            elif step is ladder.Step.SIGKILL:
                self._ladder_log(run, "sigkill", now.mono,
                                 f"not settled {self.settings.kill_grace_s}s after the SIGINT")
                run.killed = True
                self.engines.kill_engine(engine, "sigint_failed", now)
        if not run.settled and (previous is None or esc.wake_at != previous.wake_at) and esc.wake_at != float("inf"):
            self._push_timer(esc.wake_at, run.job.id)

    def _ladder_log(self, run: RunningJob, step: str, now: float, detail: str = "") -> None:
        esc = run.escalation
        log.warning("job=%s %s step=%s reason=%s elapsed=%.3fs %s", run.job.id, run.engine.tag(), step,
                    esc.reason.value if esc else "-", now - (esc.asked_at if esc else now), detail)
        self.metrics.ladder_step(step)

    # settling -------------------------------------------------------------------------------
    def settle_engine_jobs(self, engine: Engine, why: str, killed: bool, now: Now) -> None:
        """The engine is gone: due jobs end with their partial output, the others go back to the queue."""
        for job_id in list(engine.jobs):
            run = self._running.get(job_id)
            if run is None:
                continue
            overdue = now.mono >= run.deadline_at
            if run.killed or (killed and (run.escalation is not None or overdue)):
                run.killed = True
                self.settle(run, outcomes.partial(run, run.interrupt_reason or JobStatus.TIMED_OUT), now)
            else:
                # a batch neighbour of a job the watchdog had to kill is not charged an attempt
                self.settle(run, outcomes.lost(run, why, self.settings.max_attempts, charge=not killed), now)

    def requeue_all(self, why: str, now: Now) -> set[int]:
        """At stop: every running job goes back to the queue (at-least-once); returns the busy engines."""
        busy = {run.engine.id for run in self._running.values()}
        for run in list(self._running.values()):
            self.settle(run, Settlement(Q, requeue_reason=why), now)
        return busy

    def settle(self, run: RunningJob, st: Settlement, now: Now) -> None:
        """The one place a running job's record changes: stored first, then acted on."""
        if run.settled:
            return
        wall = now.wall
        job = run.job
        if st.status is Q:
            backoff = self.settings.retry_backoff_s * (2 ** max(0, job.attempts - 1)) if st.charge_attempt else 0.0
            lost = job.lost_engines + ((run.engine.id,) if st.engine_lost else ())
            attempts = job.attempts if st.charge_attempt else job.attempts - 1
            new = transition(job, Q, wall, not_before=wall + backoff, error=st.requeue_reason, lost_engines=lost,
                             attempts=attempts)
            self.metrics.requeues.labels("engine_lost" if st.engine_lost else "other").inc()
            joblog.requeued(new, run.engine, st.requeue_reason)
        else:
            finish_reason = st.finish_reason
            if st.status is JobStatus.TIMED_OUT:
                finish_reason = "deadline"
            elif st.status is JobStatus.CANCELLED:
                finish_reason = "cancelled"
            new = transition(job, st.status, wall, output=st.text, tokens=st.tokens, error=st.error,
                             finish_reason=finish_reason, prompt_tokens=st.prompt_tokens, error_detail=st.error_detail,
                             **st.extras)
        self._put(new)  # written before anyone is told
        run.settled = True
        self._running.pop(job.id, None)
        self._by_key.pop(run.key, None)
        self._observe(run, st, now.mono)
        engine = run.engine
        engine.jobs.pop(job.id, None)
        if engine.state in (EngineState.IDLE, EngineState.BUSY, EngineState.INTERRUPTING, EngineState.DRAINING):
            engine.jobs_done += 1
            after_jobs_change(engine, f"job {job.id} {new.status.value}")
            self.engines.maybe_recycle(engine, now)
        self._finished(new)
        self.shared.hooks.wake_dispatch()

    def _observe(self, run: RunningJob, st: Settlement, mono: float) -> None:
        self.metrics.run_time.observe(max(0.0, mono - run.started_mono))
        if run.interrupt_mono is not None:
            self.metrics.interrupt_latency.observe(max(0.0, mono - run.interrupt_mono))
        if run.first_token_mono is not None:
            self.metrics.ttft.observe(max(0.0, run.first_token_mono - run.started_mono))
        self.metrics.tokens.inc(st.tokens)
        self.metrics.settled(run, st, mono)

    def _finished(self, job: Job) -> None:
        self._publish_status(job)
        if job.status.terminal:
            self.metrics.job_outcomes.labels(job.status.value).inc()
            self.metrics.finished(job)
            joblog.finished(job)
            self.shared.hooks.on_settled(job)

    def expire_queued(self, now: Now) -> int:
        """Queued jobs that waited past their queue timeout end ``expired`` (by the wall clock)."""
        expired = 0
        for job in self.store.expired(now.wall, limit=1000):
            new = transition(job, JobStatus.EXPIRED, now.wall,
                             error=f"waited more than {job.queue_timeout_s}s in the queue")
            self._put(new)
            self._finished(new)
            expired += 1
        return expired

    # helpers ---------------------------------------------------------------------------------
    def view(self, job: Job) -> Job:
        run = self._running.get(job.id)
        if run is not None and job.status is R:
            return job.with_changes(output=run.text, tokens=len(run.pieces), **run.streamed_extras())
        return job

    def _publish_status(self, job: Job) -> None:
        self.shared.hub.publish(job.id, {"type": "status", "job_id": job.id, "status": job.status.value})
