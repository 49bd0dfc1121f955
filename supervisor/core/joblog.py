"""One log line per job event: submitted, dispatched, first token, re-queued, finished (logger ``llmsup.jobs``).

Each line tags its text (``job=... engine=... host=... pid=... gpu=...``) and carries the same fields as record
extras (``job_id``, ``event``, ``engine``, ``host``, ``pid``, ``gpu``, ``status``, ...), which the JSON log format
shows as keys.
"""

from __future__ import annotations

import logging
from typing import Any

from llmsup.supervisor.core.engine_state import Engine
from llmsup.supervisor.core.jobs import EngineRef, Job

log = logging.getLogger("llmsup.jobs")


def _where(engine: Engine | EngineRef | None) -> dict[str, Any]:
    if engine is None:
        return {}
    return {"engine": engine.id, "host": engine.host, "pid": engine.pid, "gpu": engine.gpu or "cpu"}


def _tag(engine: Engine | EngineRef) -> str:
    return f"engine={engine.id} host={engine.host} pid={engine.pid} gpu={engine.gpu or 'cpu'}"


def submitted(job: Job, prompt_chars: int | None = -1) -> None:
    """``prompt_chars``: -1 leaves the prompt and sampling parameters out (vLLM's requests log off), None logs the
    whole prompt, N its first N characters."""
    if not log.isEnabledFor(logging.INFO):
        return
    owner = f", owner {job.owner}" if job.owner else ""
    if prompt_chars is None or prompt_chars >= 0:
        owner += f", prompt {job.prompt[:prompt_chars]!r}, params {job.params}"
    deadline = f"{job.deadline_s:g}s" if job.deadline_s is not None else "none"
    log.info("job=%s submitted: priority %d, deadline %s, max_tokens %d%s", job.id, job.priority, deadline,
             job.params.max_tokens, owner,
             extra={"job_id": job.id, "event": "submitted", "priority": job.priority, "deadline_s": job.deadline_s,
                    "owner": job.owner})


def dispatched(job: Job, engine: Engine) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    queued = (job.started_at or job.created_at) - job.created_at
    log.info("job=%s dispatched to %s: attempt %d, queued %.3fs", job.id, _tag(engine), job.attempts, queued,
             extra={"job_id": job.id, "event": "dispatched", "attempt": job.attempts, "queued_s": round(queued, 6),
                    **_where(engine)})


def first_token(job: Job, engine: Engine, after_s: float) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    log.info("job=%s first token after %.3fs on %s", job.id, after_s, _tag(engine),
             extra={"job_id": job.id, "event": "first_token", "ttft_s": round(after_s, 6), **_where(engine)})


def requeued(job: Job, engine: Engine, why: str | None) -> None:
    log.info("job=%s re-queued from %s: %s (attempts so far %d)", job.id, _tag(engine), why or "-", job.attempts,
             extra={"job_id": job.id, "event": "requeued", "reason": why, "attempt": job.attempts, **_where(engine)})


def finished(job: Job) -> None:
    """A job that reached its end (succeeded, failed, timed out, cancelled, expired)."""
    if not log.isEnabledFor(logging.INFO):
        return
    end = job.finished_at or job.created_at
    ran = end - job.started_at if job.started_at else 0.0
    where = f" on {_tag(job.engine)}" if job.engine else ""
    error = f": {job.error}" if job.error and job.status.value != "succeeded" else ""
    log.info("job=%s finished %s after %.3fs (ran %.3fs, %d tokens, attempt %d)%s%s", job.id, job.status.value,
             end - job.created_at, ran, job.tokens, job.attempts, where, error,
             extra={"job_id": job.id, "event": "finished", "status": job.status.value,
                    "duration_s": round(end - job.created_at, 6), "run_s": round(ran, 6), "tokens": job.tokens,
                    "attempt": job.attempts, "finish_reason": job.finish_reason, **_where(job.engine)})
