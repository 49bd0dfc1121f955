"""Prometheus metrics of one supervisor (its own registry: no import-time singletons).

llmsup's own series (``llmsup_*``: the queue, engines by state, the escalation ladder, restarts, deadlines,
standbys, per-engine memory) and vLLM's names beside them (``vllm_metrics.py``). The core calls the
methods below at its observation points (dispatch, each streamed piece, settle, end, each health tick).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from llmsup.supervisor.core.engine_state import Engine, EngineState
from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.core.running import RunningJob
from llmsup.supervisor.metrics import buckets as b
from llmsup.supervisor.metrics.request_times import RequestTimes
from llmsup.supervisor.metrics.stats_history import StatsHistory, Totals
from llmsup.supervisor.metrics.vllm import VLLMMetrics
from llmsup.supervisor.pools import DEFAULT

if TYPE_CHECKING:
    from llmsup.supervisor.core.outcomes import Settlement

MIB = 1024 * 1024
RESTART_REASONS = frozenset({"lost", "recycled", "killed", "sigint_failed", "init_failed", "admin_restart"})
FINISHED_REASON = {JobStatus.TIMED_OUT: "timeout", JobStatus.CANCELLED: "abort", JobStatus.FAILED: "error",
                   JobStatus.EXPIRED: "expired"}


def restart_label(reason: str) -> str:
    """A restart reason as a label value from a small fixed set (a reason may carry numbers for the log)."""
    if reason in RESTART_REASONS:
        return reason
    return "no_heartbeat" if reason.startswith("no heartbeat") else re.sub(r"\W+", "_", reason.split(":")[0])[:32]


class Metrics:
    def __init__(self, limits: b.Limits | None = None,
                 model_name: Callable[[str], str] = lambda pool: "default") -> None:
        limits = limits or b.Limits()
        self.model_name = model_name  # a pool's name -> the model_name its vllm:* series carry
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total: the supervisor's CPU, saturation coming
        latency = b.reaching(b.LATENCY, limits.run_s)
        self.jobs_submitted = Counter("llmsup_jobs_submitted", "Jobs accepted", registry=r)
        self.job_outcomes = Counter("llmsup_job_outcomes", "Jobs that reached a terminal status", ["status"], registry=r)
        self.requeues = Counter("llmsup_job_requeues", "Jobs put back in the queue", ["reason"], registry=r)
        self.queue_depth = Gauge("llmsup_queue_depth", "Jobs waiting in the queue", registry=r)
        self.running = Gauge("llmsup_running_jobs", "Jobs running on engines", registry=r)
        self.engines = Gauge("llmsup_engines", "Engines by state", ["state"], registry=r)
        self.pool_engines = Gauge("llmsup_pool_engines", "Engines of each pool by state", ["pool", "state"], registry=r)
        self.pool_queue_depth = Gauge("llmsup_pool_queue_depth", "Jobs waiting for each pool", ["pool"], registry=r)
        self.pool_running = Gauge("llmsup_pool_running_jobs", "Jobs running on each pool's engines", ["pool"],
                                  registry=r)
        self.queue_wait = Histogram("llmsup_queue_wait_seconds", "Arrival to dispatch (of each attempt)",
                                    buckets=b.reaching(b.LATENCY, limits.wait_s), registry=r)
        self.run_time = Histogram("llmsup_run_seconds", "Dispatch to settled", buckets=latency, registry=r)
        self.ttft = Histogram("llmsup_time_to_first_token_seconds",
                              "Dispatch to first token (from arrival: vllm:time_to_first_token_seconds)",
                              buckets=latency, registry=r)
        self.tokens = Counter("llmsup_tokens_generated", "Tokens generated (counted when a job settles)", registry=r)
        self.interrupts = Counter(
            "llmsup_interrupt_steps", "Escalation ladder steps taken", ["step"], registry=r
        )  # sigint, probe, lost_reply, sigkill
        self.escalations = Counter("llmsup_escalations", "Interrupts asked (escalation ladders started), by reason",
                                   ["reason"], registry=r)  # timed_out, cancelled
        self.deadlines_hit = Counter(
            "llmsup_deadlines_hit", "Jobs stopped by their deadline, by who stopped them: the engine itself (a "
            "batched engine's loop) or the watchdog", ["enforced_by"], registry=r)
        self.interrupt_latency = Histogram(
            "llmsup_interrupt_latency_seconds", "Interrupt asked to job settled", buckets=latency, registry=r
        )
        self.engine_restarts = Counter("llmsup_engine_restarts", "Engines replaced", ["reason"], registry=r)
        self.malformed = Counter(
            "llmsup_malformed_messages", "Messages from engines that could not be read, dropped", ["channel"], registry=r
        )  # stream (token stream), control (batched engines' control channel)
        self.refused_peers = Counter(
            "llmsup_refused_peers", "Peers and claims refused on llmsup's channels", ["reason"], registry=r
        )  # unknown_key (the handshake), revoked (a revoked host's agent), claim (a key claiming another's host)
        self.standby_promotions = Counter(
            "llmsup_standby_promotions", "Standby engines promoted in place of a killed, lost or recycled engine",
            registry=r,
        )
        self.driver_errors = Counter(
            "llmsup_internal_errors", "Unexpected errors caught in the supervisor (the job or engine took its failure path)",
            ["step"], registry=r,
        )
        self.standby_target = Gauge("llmsup_standby_target", "Warm standby engines to keep (loaded ones: "
                                    "llmsup_engines{state=\"standby\"})", registry=r)
        self.engine_rss = Gauge("llmsup_engine_rss_bytes", "Resident memory of each engine process, as it last "
                                "reported (at load, after each job, each serving-loop heartbeat)", ["engine"],
                                registry=r)
        self.engine_gpu_memory = Gauge(
            "llmsup_engine_gpu_memory_bytes", "GPU memory held by each engine and the processes it started, as it "
            "last reported (engines on a GPU only)", ["engine", "gpu"], registry=r)
        self.loop_restarts = Counter(
            "llmsup_loop_restarts", "Supervisor loops restarted after an unexpected error", ["loop"], registry=r
        )
        self.vllm = VLLMMetrics(r, limits)
        self.history = StatsHistory()
        self._tokens = 0.0  # generated, as streamed (the history's tokens/s)
        self._interrupted = 0
        self._killed = 0
        self._rss_series: set[str] = set()  # engine label values the memory gauges carry now
        self._gpu_series: set[tuple[str, str]] = set()

    def _update_pools(self, queued: int, running: int, engines: list[Engine], pools: tuple[str, ...],
                      per_pool: tuple[Mapping[str, int], Mapping[str, int]] | None) -> None:
        waiting, busy = per_pool if per_pool is not None and len(pools) > 1 else ({pools[0]: queued}, {pools[0]: running})
        by_pool = {(pool, state): 0 for pool in pools for state in EngineState}
        for engine in engines:
            by_pool[(engine.pool, engine.state)] = by_pool.get((engine.pool, engine.state), 0) + 1
        for (pool, state), n in by_pool.items():
            self.pool_engines.labels(pool, state.value).set(n)
        queues: dict[str, tuple[int, int]] = {}
        for pool in pools:
            self.pool_queue_depth.labels(pool).set(waiting.get(pool, 0))
            self.pool_running.labels(pool).set(busy.get(pool, 0))
            w, r = queues.get(self.model_name(pool), (0, 0))
            queues[self.model_name(pool)] = (w + waiting.get(pool, 0), r + busy.get(pool, 0))
        self.vllm.set_queues(queues)

    # observation points of the core ------------------------------------------------------------
    def token_piece(self, gap_s: float | None, pool: str = DEFAULT) -> None:
        self.vllm.series(self.model_name(pool)).token_piece(gap_s)
        self._tokens += 1

    def ladder_step(self, step: str) -> None:
        self.interrupts.labels(step).inc()
        if step == "sigkill":
            self._killed += 1

    def interrupt_asked(self, reason: JobStatus) -> None:
        self.escalations.labels(reason.value).inc()

    def engine_restarted(self, reason: str) -> None:
        self.engine_restarts.labels(restart_label(reason)).inc()

    def settled(self, run: RunningJob, st: Settlement, mono: float) -> None:
        """A running job's attempt settled at ``mono`` (back to the queue, or ended)."""
        ended = st.status is not JobStatus.QUEUED
        pieces = len(run.pieces)
        self._tokens += max(0, st.tokens - pieces)
        times = RequestTimes.of(run, mono, st.tokens) if ended else None
        self.vllm.series(self.model_name(run.job.pool)).settled(times, st.tokens, pieces, st.prompt_tokens,
                                                     run.job.params.max_tokens)
        if st.status in (JobStatus.TIMED_OUT, JobStatus.CANCELLED):
            self._interrupted += 1
        if st.status is JobStatus.TIMED_OUT:
            self.deadlines_hit.labels("engine" if run.escalation is None else "watchdog").inc()

    def finished(self, job: Job) -> None:
        """A job reached a terminal status (whether it ran or not)."""
        reason = (job.finish_reason or "stop") if job.status is JobStatus.SUCCEEDED else FINISHED_REASON[job.status]
        self.vllm.series(self.model_name(job.pool)).finished(reason, (job.finished_at or job.created_at) - job.created_at)

    def update(self, queued: int, running: int, engines: list[Engine], standby_target: int, mono: float,
               wall: float, pools: tuple[str, ...] = (DEFAULT,),
               per_pool: tuple[Mapping[str, int], Mapping[str, int]] | None = None) -> None:
        """Gauges as of now (each health tick and each scrape); a history sample once a second. ``pools``: the
        server's pools; ``per_pool``: (queued, running) jobs of each (one pool: ``queued`` and ``running``)."""
        self.queue_depth.set(queued)
        self.running.set(running)
        by_state = {state: 0 for state in EngineState}
        for engine in engines:
            by_state[engine.state] += 1
        for state, n in by_state.items():
            self.engines.labels(state.value).set(n)
        self.standby_target.set(standby_target)
        self._update_pools(queued, running, engines, pools, per_pool)
        rss: set[str] = set()
        gpu: set[tuple[str, str]] = set()
        for engine in engines:
            if engine.state is EngineState.DEAD:
                continue
            rss.add(str(engine.id))
            self.engine_rss.labels(str(engine.id)).set(engine.rss_mb * MIB)
            if engine.gpu_mem_mb is not None:
                gpu.add((str(engine.id), engine.gpu))
                self.engine_gpu_memory.labels(str(engine.id), engine.gpu).set(engine.gpu_mem_mb * MIB)
        for gone in self._rss_series - rss:  # engines that are gone leave no series behind
            self.engine_rss.remove(gone)
        for gone_gpu in self._gpu_series - gpu:
            self.engine_gpu_memory.remove(*gone_gpu)
        self._rss_series, self._gpu_series = rss, gpu
        if self.history.due(mono):
            serving = by_state[EngineState.IDLE] + by_state[EngineState.BUSY]
            self.history.add(wall, Totals(mono, self._tokens, self._interrupted, self._killed), queued, running,
                             by_state[EngineState.STANDBY], serving)
