"""Prometheus metrics of one supervisor (its own registry: no import-time singletons)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs_submitted = Counter("llmsup_jobs_submitted", "Jobs accepted", registry=r)
        self.job_outcomes = Counter("llmsup_job_outcomes", "Jobs that reached a terminal status", ["status"], registry=r)
        self.requeues = Counter("llmsup_job_requeues", "Jobs put back in the queue", ["reason"], registry=r)
        self.queue_depth = Gauge("llmsup_queue_depth", "Jobs waiting in the queue", registry=r)
        self.running = Gauge("llmsup_running_jobs", "Jobs running on engines", registry=r)
        self.engines = Gauge("llmsup_engines", "Engines by state", ["state"], registry=r)
        self.queue_wait = Histogram(
            "llmsup_queue_wait_seconds", "Submit to dispatch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.run_time = Histogram("llmsup_run_seconds", "Dispatch to settled", buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llmsup_time_to_first_token_seconds", "Dispatch to first token", buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("llmsup_tokens_generated", "Tokens generated", registry=r)
        self.interrupts = Counter(
            "llmsup_interrupt_steps", "Escalation ladder steps taken", ["step"], registry=r
        )  # sigint, probe, lost_reply, sigkill
        self.interrupt_latency = Histogram(
            "llmsup_interrupt_latency_seconds", "Interrupt asked to job settled", buckets=LATENCY_BUCKETS, registry=r
        )
        self.engine_restarts = Counter("llmsup_engine_restarts", "Engines replaced", ["reason"], registry=r)
        self.malformed = Counter(
            "llmsup_malformed_messages", "Messages from engines that could not be read, dropped", ["channel"], registry=r
        )  # stream (token stream), control (batched engines' control channel)
        self.standby_promotions = Counter(
            "llmsup_standby_promotions", "Standby engines promoted in place of a killed, lost or recycled engine",
            registry=r,
        )
        self.driver_errors = Counter(
            "llmsup_internal_errors", "Unexpected errors caught in the supervisor (the job or engine took its failure path)",
            ["step"], registry=r,
        )
        self.loop_restarts = Counter(
            "llmsup_loop_restarts", "Supervisor loops restarted after an unexpected error", ["loop"], registry=r
        )
