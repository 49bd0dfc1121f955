"""Settings of jobs: deadlines, limits of what a job may ask, the queue, retries, the watchdog's graces, engine
recycling and the retention of finished jobs. :class:`JobFields` is a base of
:class:`~llmsup.supervisor.settings.Settings`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

from llmsup.supervisor.settings_meta import ENGINES, JOBS, cli

NATIVE_DEADLINE_S = 60.0  # the native job API's default run-time limit (docs/deadlines.md)


class JobFields(BaseSettings):
    # jobs
    deadline_s: float | None = Field(
        None, gt=0, description="run-time limit of a job that names none; unset: 60 s on the native job API, none on "
        "the OpenAI routes (a generation the user did not bound is never cut: stall_timeout_s guards them)",
        json_schema_extra=cli(JOBS, "--deadline", "--job-deadline"))
    stall_timeout_s: float = Field(
        30.0, ge=0, description="a running job that produces no token for this long is interrupted as a runaway "
        "(also a hung kernel), whatever its deadline; 0: off", json_schema_extra=cli(JOBS))
    max_deadline_s: float = Field(3600.0, gt=0, description="longest deadline a job may ask",
                                  json_schema_extra=cli(JOBS))
    queue_timeout_s: float = Field(600.0, gt=0, description="a queued job expires after this wait",
                                   json_schema_extra=cli(JOBS))
    default_max_tokens: int = Field(64, ge=1, description="max_tokens of a job that names none",
                                    json_schema_extra=cli(JOBS))
    max_tokens_limit: int = Field(100_000, ge=1, description="largest max_tokens a job may ask",
                                  json_schema_extra=cli(JOBS))
    max_prompt_chars: int = Field(200_000, ge=1, description="longest prompt accepted, in characters",
                                  json_schema_extra=cli(JOBS))
    max_request_job_bytes: int = Field(
        16_000_000, ge=1, description="most bytes of prompts and parameters one request's jobs may hold together "
        "(a copy per job: n x prompts), else 400", json_schema_extra=cli(JOBS))
    max_request_logprobs: int = Field(
        4_000_000, ge=1, description="most logprob records one request may ask for (jobs x tokens x alternatives)",
        json_schema_extra=cli(JOBS))
    queue_max: int = Field(10_000, ge=1, description="queued jobs accepted before 429", json_schema_extra=cli(JOBS))
    max_attempts: int = Field(3, ge=1, le=100, description="runs per job before it fails (an engine lost mid-job "
                              "costs one)", json_schema_extra=cli(JOBS))
    retry_backoff_s: float = Field(0.2, ge=0, description="first retry delay; doubles per attempt",
                                   json_schema_extra=cli(JOBS))
    affinity_wait_s: float = Field(
        0.5, ge=0, le=60, description="a job with affinity (a pipeline step's) waits up to this long, from its "
        "submission, for the engine it names to free a slot, before it runs on another engine of that host, else any; "
        "0: no wait", json_schema_extra=cli(JOBS))
    # watchdog
    interrupt_grace_s: float = Field(0.25, gt=0, description="SIGINT -> no-op probe",
                                     json_schema_extra=cli(JOBS, "--interrupt-grace"))
    kill_grace_s: float = Field(1.0, gt=0, description="SIGINT -> SIGKILL of the engine",
                                json_schema_extra=cli(JOBS, "--kill-grace"))
    signal_path: Literal["auto", "direct", "ipp"] = Field(
        "auto", description="auto: os.kill for engines on this host, Client.send_signal for others",
        json_schema_extra=cli(JOBS),
    )
    engine_relaunch_s: float = Field(
        5.0, gt=0, description="at most one launch this often to make up a short engine count (a failed launch)",
        json_schema_extra=cli(ENGINES),
    )
    engine_beat_timeout_s: float = Field(
        10.0, gt=0, description="a batched engine whose serving loop sends no heartbeat for this long is replaced",
        json_schema_extra=cli(ENGINES),
    )
    max_jobs_per_engine: int = Field(0, ge=0, description="recycle an engine after N jobs (0: never)",
                                     json_schema_extra=cli(ENGINES))
    max_engine_rss_mb: float = Field(0, ge=0, description="recycle an engine above this RSS (0: never)",
                                     json_schema_extra=cli(ENGINES))
    # retention of finished jobs (queued and running jobs are never deleted)
    retain_s: float = Field(0.0, ge=0, description="delete finished jobs this long after they ended (0: keep)",
                            json_schema_extra=cli(JOBS))
    retain_jobs: int = Field(0, ge=0, description="keep at most this many finished jobs, newest first (0: all)",
                             json_schema_extra=cli(JOBS))

    def default_deadline_s(self, unbounded: bool = False) -> float | None:
        """The run-time limit of a job that names none: ``deadline_s`` when set, else none for ``unbounded``
        requests (the OpenAI routes), else the native API's 60 s (at most ``max_deadline_s``)."""
        if self.deadline_s is not None:
            return self.deadline_s
        return None if unbounded else min(NATIVE_DEADLINE_S, self.max_deadline_s)

    @model_validator(mode="after")
    def _check_jobs(self) -> "JobFields":
        if self.kill_grace_s < self.interrupt_grace_s:
            raise ValueError("kill_grace_s must be >= interrupt_grace_s")
        if self.deadline_s is not None and self.deadline_s > self.max_deadline_s:
            raise ValueError("deadline_s must be <= max_deadline_s")
        return self
