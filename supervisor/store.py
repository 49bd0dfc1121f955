"""Job storage: a few documented operations, an SQLite store and an in-memory twin.

Both satisfy :class:`JobStore`; ``tests/test_store.py`` runs one contract test
against each. The supervisor owns the only writer; every transition is written
here before it is acted on.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from llmsup.supervisor.jobs import Job, JobStatus

Jobs = list[Job]  # for annotations inside the stores, where ``list`` names their method


class DuplicateKey(Exception):
    """An idempotency key is already taken; ``existing`` is the job that holds it."""

    def __init__(self, existing: Job) -> None:
        super().__init__(existing.id)
        self.existing = existing


class JobStore(Protocol):
    def add(self, job: Job) -> Job:
        """Insert a new job, assigning its ``seq``; raises DuplicateKey for a taken idempotency key."""

    def put(self, job: Job) -> None:
        """Replace the stored record of an existing job."""

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""

    def by_key(self, idempotency_key: str) -> Job | None:
        """The job created with this idempotency key, or None."""

    def list(
        self, statuses: Iterable[JobStatus] | None = None, owner: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        """Jobs newest first, optionally filtered by status and owner."""

    def next_queued(self, now: float, limit: int) -> Jobs:
        """Queued jobs ready to run at ``now``: highest priority first, FIFO within a priority."""

    def counts(self) -> dict[JobStatus, int]:
        """Number of jobs in each status."""

    def count(self, status: JobStatus) -> int:
        """Number of jobs in one status (cheap: used on every submit)."""

    def expired(self, now: float, limit: int) -> Jobs:
        """Queued jobs whose queue timeout (created_at + queue_timeout_s) has passed at ``now``."""

    def close(self) -> None:
        """Release the storage."""


def _expires_at(job: Job) -> float:
    return job.created_at + job.queue_timeout_s


def _order_key(job: Job) -> tuple[int, int]:
    return (-job.priority, job.seq)


class MemoryStore:
    """In-memory twin of SQLiteStore, for tests and throwaway runs."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._keys: dict[str, str] = {}
        self._seq = itertools.count(1)

    def add(self, job: Job) -> Job:
        if job.idempotency_key is not None and job.idempotency_key in self._keys:
            raise DuplicateKey(self._jobs[self._keys[job.idempotency_key]])
        job = job.with_changes(seq=next(self._seq))
        self._jobs[job.id] = job
        if job.idempotency_key is not None:
            self._keys[job.idempotency_key] = job.id
        return job

    def put(self, job: Job) -> None:
        if job.id not in self._jobs:
            raise KeyError(job.id)
        self._jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def by_key(self, idempotency_key: str) -> Job | None:
        job_id = self._keys.get(idempotency_key)
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

    def next_queued(self, now: float, limit: int) -> Jobs:
        ready = [j for j in self._jobs.values() if j.status is JobStatus.QUEUED and j.not_before <= now]
        return sorted(ready, key=_order_key)[:limit]

    def counts(self) -> dict[JobStatus, int]:
        out = {s: 0 for s in JobStatus}
        for j in self._jobs.values():
            out[j.status] += 1
        return out

    def count(self, status: JobStatus) -> int:
        return sum(1 for j in self._jobs.values() if j.status is status)

    def expired(self, now: float, limit: int) -> Jobs:
        due = [j for j in self._jobs.values() if j.status is JobStatus.QUEUED and _expires_at(j) <= now]
        return sorted(due, key=lambda j: j.seq)[:limit]

    def close(self) -> None:
        return None


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    not_before REAL NOT NULL,
    expires_at REAL NOT NULL,
    owner TEXT,
    idempotency_key TEXT UNIQUE,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (status, priority DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (status, expires_at);
"""


class SQLiteStore:
    """Jobs in one SQLite file (WAL mode); the record is JSON beside indexed columns."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()
        self._db.executescript(SCHEMA)
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()
        self._seq = itertools.count(int(row[0]) + 1)

    def _migrate(self) -> None:
        """Bring a store written by an older llmsup up to this schema."""
        cols = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if cols and "expires_at" not in cols:
            self._db.execute("ALTER TABLE jobs ADD COLUMN expires_at REAL NOT NULL DEFAULT 0")
            for job_id, data in self._db.execute("SELECT id, data FROM jobs").fetchall():
                self._db.execute("UPDATE jobs SET expires_at=? WHERE id=?", (_expires_at(Job.from_dict(json.loads(data))), job_id))

    @staticmethod
    def _row(job: Job) -> tuple[object, ...]:
        return (job.status.value, job.priority, job.not_before, _expires_at(job), job.owner, json.dumps(job.to_dict()))

    def add(self, job: Job) -> Job:
        job = job.with_changes(seq=next(self._seq))
        try:
            self._db.execute(
                "INSERT INTO jobs (status, priority, not_before, expires_at, owner, data, id, seq, idempotency_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*self._row(job), job.id, job.seq, job.idempotency_key),
            )
        except sqlite3.IntegrityError:
            existing = self.by_key(job.idempotency_key) if job.idempotency_key else None
            if existing is None:
                raise
            raise DuplicateKey(existing) from None
        return job

    def put(self, job: Job) -> None:
        cur = self._db.execute(
            "UPDATE jobs SET status=?, priority=?, not_before=?, expires_at=?, owner=?, data=? WHERE id=?",
            (*self._row(job), job.id),
        )
        if cur.rowcount != 1:
            raise KeyError(job.id)

    def _one(self, sql: str, arg: object) -> Job | None:
        row = self._db.execute(sql, (arg,)).fetchone()
        return Job.from_dict(json.loads(row[0])) if row else None

    def get(self, job_id: str) -> Job | None:
        return self._one("SELECT data FROM jobs WHERE id=?", job_id)

    def by_key(self, idempotency_key: str) -> Job | None:
        return self._one("SELECT data FROM jobs WHERE idempotency_key=?", idempotency_key)

    def list(
        self, statuses: Iterable[JobStatus] | None = None, owner: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        where, args = [], []  # type: list[str], list[object]
        if statuses:
            values = [s.value for s in statuses]
            where.append(f"status IN ({','.join('?' * len(values))})")
            args.extend(values)
        if owner is not None:
            where.append("owner=?")
            args.append(owner)
        sql = "SELECT data FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY seq DESC LIMIT ? OFFSET ?"
        rows = self._db.execute(sql, (*args, limit, offset)).fetchall()
        return [Job.from_dict(json.loads(r[0])) for r in rows]

    def next_queued(self, now: float, limit: int) -> Jobs:
        rows = self._db.execute(
            "SELECT data FROM jobs WHERE status='queued' AND not_before<=? ORDER BY priority DESC, seq LIMIT ?",
            (now, limit),
        ).fetchall()
        return [Job.from_dict(json.loads(r[0])) for r in rows]

    def counts(self) -> dict[JobStatus, int]:
        out = {s: 0 for s in JobStatus}
        for status, n in self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
            out[JobStatus(status)] = n
        return out

    def count(self, status: JobStatus) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM jobs WHERE status=?", (status.value,)).fetchone()[0])

    def expired(self, now: float, limit: int) -> Jobs:
        rows = self._db.execute(
            "SELECT data FROM jobs WHERE status='queued' AND expires_at<=? ORDER BY seq LIMIT ?", (now, limit)
        ).fetchall()
        return [Job.from_dict(json.loads(r[0])) for r in rows]

    def close(self) -> None:
        self._db.close()
