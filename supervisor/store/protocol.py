"""Job storage: a few documented operations, an SQLite store and an in-memory twin.

Both satisfy :class:`JobStore`; ``tests/test_store.py`` runs one contract test
against each. The supervisor owns the only writer; every transition is written
here before it is acted on.

Idempotency keys belong to an owner: the store keeps ``(owner, key)`` unique, so one
owner's key never finds another owner's job (jobs without an owner, the admin's and
those of a server without API keys, are one owner of their own).
"""

from __future__ import annotations

import builtins  # the stores' method `list` shadows the builtin in their class bodies
from collections.abc import Iterable
from typing import Literal, Protocol

from llmsup.supervisor.core.jobs import Job, JobStatus

SyncMode = Literal["normal", "full", "terminal"]
PRUNE_BATCH = 500


def scoped_key(owner: str | None, idempotency_key: str) -> str:
    """The stored form of an idempotency key: ``owner/key``, ``/key`` without an owner. Owner names hold no
    ``/`` (supervisor/core/requests.py), so the form is unambiguous."""
    return f"{owner or ''}/{idempotency_key}"


class DuplicateKey(Exception):
    """An idempotency key is already taken; ``existing`` is the job that holds it."""

    def __init__(self, existing: Job) -> None:
        super().__init__(existing.id)
        self.existing = existing


class PageReader(Protocol):
    """Reads pages of jobs from any one thread at a time (off the event loop), concurrently with the writer."""

    def list(
        self, statuses: Iterable[JobStatus] | None = None, owner: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        """Jobs newest first, as ``JobStore.list``."""


class JobStore(Protocol):
    def add(self, job: Job) -> Job:
        """Insert a new job, assigning its ``seq``; raises DuplicateKey for a taken idempotency key."""

    def put(self, job: Job) -> None:
        """Replace the stored record of an existing job."""

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""

    def by_key(self, idempotency_key: str, owner: str | None = None) -> Job | None:
        """The job this owner created with this idempotency key, or None."""

    def list(
        self, statuses: Iterable[JobStatus] | None = None, owner: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        """Jobs newest first, optionally filtered by status and owner."""

    def next_queued(self, now: float, limit: int) -> builtins.list[Job]:
        """Queued jobs ready to run at ``now``: highest priority first; within a priority, owners take turns (fair
        shares: ``supervisor/store/fairness.py``), each owner's jobs in arrival order."""

    def counts(self) -> dict[JobStatus, int]:
        """Number of jobs in each status."""

    def count(self, status: JobStatus) -> int:
        """Number of jobs in one status (cheap: used on every submit)."""

    def count_owned(self, status: JobStatus, owner: str) -> int:
        """Number of one owner's jobs in one status (cheap: the per-owner quota on submit)."""

    def expired(self, now: float, limit: int) -> builtins.list[Job]:
        """Queued jobs whose queue timeout (created_at + queue_timeout_s) has passed at ``now``."""

    def prune(self, finished_before: float | None, keep: int | None, limit: int = PRUNE_BATCH) -> int:
        """Delete up to ``limit`` finished jobs: those that ended before ``finished_before``, and those beyond
        the ``keep`` most recently finished. Queued and running jobs are never deleted. Returns how many."""

    def reader(self) -> PageReader | None:
        """A reader for worker threads (None: list in place, e.g. in memory where a listing is cheap)."""

    def close(self) -> None:
        """Release the storage."""


def expires_at(job: Job) -> float:
    """When a queued job expires (its queue deadline, wall clock)."""
    return job.created_at + job.queue_timeout_s


def ready_order(job: Job) -> tuple[int, int]:
    """Priority first, then arrival (the order of one owner's queued jobs; owners take turns within a priority)."""
    return (-job.priority, job.seq)
