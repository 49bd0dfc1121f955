"""The in-memory twin of the SQLite store: the same contract (``tests/test_store.py`` runs one test on both)."""

from __future__ import annotations

import builtins  # the stores' method `list` shadows the builtin in their class bodies
import itertools
from collections.abc import Iterable

from llmsup.supervisor.core.jobs import TERMINAL, Job, JobStatus
from llmsup.supervisor.store.fairness import Turns
from llmsup.supervisor.store.openjobs import OpenJobs
from llmsup.supervisor.store.protocol import PRUNE_BATCH, DuplicateKey, expires_at, scoped_key


class MemoryStore:
    """In-memory twin of SQLiteStore, for tests and throwaway runs."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._keys: dict[str, str] = {}
        self._seq = itertools.count(1)
        self._turns = Turns()  # fair turns (supervisor/store/fairness.py)
        self.open = OpenJobs()  # queued and running: counts and the queue's order without a scan

    def add(self, job: Job) -> Job:
        key = scoped_key(job.owner, job.idempotency_key) if job.idempotency_key is not None else None
        if key is not None and key in self._keys:
            raise DuplicateKey(self._jobs[self._keys[key]])
        job = job.with_changes(seq=next(self._seq))
        self._jobs[job.id] = job
        self.open.track(job, self._turns.take(job.owner, job.priority))
        if key is not None:
            self._keys[key] = job.id
        return job

    def put(self, job: Job) -> None:
        if job.id not in self._jobs:
            raise KeyError(job.id)
        self._jobs[job.id] = job
        self.open.track(job)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def by_key(self, idempotency_key: str, owner: str | None = None) -> Job | None:
        job_id = self._keys.get(scoped_key(owner, idempotency_key))
        return self._jobs.get(job_id) if job_id else None

    def list(
        self, statuses: Iterable[JobStatus] | None = None, owner: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        wanted = set(statuses) if statuses else None
        jobs = [
            j for j in self._jobs.values()
            if (wanted is None or j.status in wanted) and (owner is None or j.owner == owner)
        ]
        jobs.sort(key=lambda j: j.seq, reverse=True)
        return jobs[offset : offset + limit]

    def next_queued(self, now: float, limit: int) -> builtins.list[Job]:
        picked = self.open.next_queued(now, limit)
        self._turns.read((j.priority, self.open.turn(j.id)) for j in picked)
        return picked

    def counts(self) -> dict[JobStatus, int]:
        out = {s: 0 for s in JobStatus}
        for j in self._jobs.values():
            out[j.status] += 1
        return out

    def count(self, status: JobStatus) -> int:
        if not status.terminal:
            return self.open.count(status)
        return sum(1 for j in self._jobs.values() if j.status is status)

    def count_owned(self, status: JobStatus, owner: str) -> int:
        if not status.terminal:
            return self.open.count_owned(status, owner)
        return sum(1 for j in self._jobs.values() if j.status is status and j.owner == owner)

    def expired(self, now: float, limit: int) -> builtins.list[Job]:
        due = [j for j in self._jobs.values() if j.status is JobStatus.QUEUED and expires_at(j) <= now]
        return sorted(due, key=lambda j: j.seq)[:limit]

    def prune(self, finished_before: float | None, keep: int | None, limit: int = PRUNE_BATCH) -> int:
        done = sorted(((j.finished_at, j.seq, j) for j in self._jobs.values()
                       if j.status in TERMINAL and j.finished_at is not None), key=lambda row: row[:2])
        doomed: dict[str, Job] = {}
        if finished_before is not None:
            doomed.update((j.id, j) for finished_at, _, j in done if finished_at < finished_before)
        if keep is not None:
            doomed.update((j.id, j) for _, _, j in done[: max(0, len(done) - keep)])
        victims = list(doomed.values())[:limit]
        for job in victims:
            del self._jobs[job.id]
            if job.idempotency_key is not None:
                self._keys.pop(scoped_key(job.owner, job.idempotency_key), None)
        return len(victims)

    def reader(self) -> None:
        return None  # listed in place: no parsing to move off the loop

    def close(self) -> None:
        return None
