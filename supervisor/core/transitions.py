"""The one state machine: which status may follow which, and what each sets."""

from __future__ import annotations

from typing import Any

from llmsup.supervisor.core.jobs import Job, JobStatus

Q, R = JobStatus.QUEUED, JobStatus.RUNNING
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    Q: frozenset({R, JobStatus.CANCELLED, JobStatus.EXPIRED}),
    # running -> queued: engine lost, or the supervisor restarted under it
    R: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED, Q}),
}


class InvalidTransition(ValueError):
    def __init__(self, job: Job, target: JobStatus) -> None:
        super().__init__(f"job {job.id}: {job.status.value} -> {target.value} is not allowed")
        self.job = job
        self.target = target


def can_move(current: JobStatus, target: JobStatus) -> bool:
    return target in ALLOWED.get(current, frozenset())


def transition(job: Job, target: JobStatus, now: float, **changes: Any) -> Job:
    """Return the job in ``target`` status; raises InvalidTransition if not allowed."""
    if not can_move(job.status, target):
        raise InvalidTransition(job, target)
    if target is R:
        changes.setdefault("started_at", now)
        changes["attempts"] = job.attempts + 1
        changes.setdefault("finished_at", None)
    elif target is Q:
        changes.setdefault("engine", None)
        changes.setdefault("started_at", None)
        changes.setdefault("output", "")
        changes.setdefault("tokens", 0)
    else:
        changes.setdefault("finished_at", now)
    return job.with_changes(status=target, **changes)
