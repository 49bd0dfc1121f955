"""The SQLite job store: one writer (the supervisor), WAL, and readers that never block it.

Writes may be grouped (``group_commits``): the first write of an event-loop turn opens a transaction and schedules
its commit for the end of the turn, so a turn's writes cost one commit, and its terminal transitions one fsync
between them. Whoever answers a client for a write (a 202) first awaits ``committed``; everyone told of a
transition by the loop (waiters, event streams) runs after the commit, scheduled after it. The open jobs are kept
in memory beside the records (``openjobs.py``): the hot path reads no row.
"""

from __future__ import annotations

import asyncio
import builtins  # the stores' method `list` shadows the builtin in their class bodies
import itertools
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote

from llmsup.supervisor.core.jobs import TERMINAL, Job, JobStatus
from llmsup.supervisor.rundir import create_private, tighten
from llmsup.supervisor.store.fairness import Turns
from llmsup.supervisor.store.migrate import migrate
from llmsup.supervisor.store.openjobs import OpenJobs
from llmsup.supervisor.store.protocol import PRUNE_BATCH, DuplicateKey, SyncMode, expires_at, scoped_key

log = logging.getLogger("llmsup.store")
Schedule = Callable[[Callable[[], None]], object]  # runs a callback at the end of this turn (loop.call_soon)

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
    data TEXT NOT NULL,
    finished_at REAL,
    error_detail TEXT,
    turn REAL NOT NULL DEFAULT 0
);
DROP INDEX IF EXISTS jobs_ready;
CREATE INDEX IF NOT EXISTS jobs_turn ON jobs (status, priority DESC, turn, seq);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq);
CREATE INDEX IF NOT EXISTS jobs_owner_status ON jobs (owner, status);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (status, expires_at);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
"""
TERMINAL_SQL = ",".join(f"'{s.value}'" for s in sorted(TERMINAL, key=lambda s: s.value))


def _parse(rows: Iterable[tuple[str]]) -> list[Job]:
    return [Job.from_dict(json.loads(r[0])) for r in rows]


def _list_query(
    statuses: Iterable[JobStatus] | None, owner: str | None, limit: int, offset: int
) -> tuple[str, tuple[object, ...]]:
    where, args = [], []  # type: list[str], list[object]
    if statuses:
        values = [s.value for s in statuses]
        where.append(f"status IN ({','.join('?' * len(values))})")
        args.extend(values)
    if owner is not None:
        where.append("owner=?")
        args.append(owner)
    sql = "SELECT data FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
    return sql + " ORDER BY seq DESC LIMIT ? OFFSET ?", (*args, limit, offset)


class SQLiteStore:
    """Jobs in one SQLite file (WAL mode); the record is JSON beside indexed columns.

    The file and its ``-wal`` / ``-shm`` companions are 0600. ``sync``: ``terminal`` (default) commits a
    job's terminal transition with ``synchronous=FULL`` (the WAL is fsynced: the outcome survives a power
    loss) and everything else with ``NORMAL``; ``full`` fsyncs every commit; ``normal`` none (a power loss
    can undo the last commits, never corrupt the file). Costs: docs/benchmarks.md, "Durability". A deleted job
    leaves nothing readable behind: ``secure_delete`` zeroes its pages, and a prune ends with the WAL truncated.
    """

    def __init__(self, path: Path | str, sync: SyncMode = "terminal") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            create_private(Path(self.path))  # SQLite gives -wal and -shm the database file's mode
            for side in ("-wal", "-shm", "-journal"):
                tighten(Path(self.path + side))
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA secure_delete=ON")  # a deleted job's prompt and output are zeroed, not left in free pages
        self.set_sync(sync)
        migrate(self._db, scoped_key)
        self._db.executescript(SCHEMA)
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()
        self._seq = itertools.count(int(row[0]) + 1)
        self._turns = Turns()
        self._turns.restore(
            self._db.execute("SELECT owner, priority, MAX(turn) FROM jobs WHERE status='queued' GROUP BY owner, priority"),
            self._db.execute("SELECT priority, MIN(turn) - 1 FROM jobs WHERE status='queued' GROUP BY priority"))
        self._reader: StoreReader | None = None
        self.open = OpenJobs()
        for data, turn in self._db.execute("SELECT data, turn FROM jobs WHERE status IN ('queued', 'running')"):
            self.open.track(Job.from_dict(json.loads(data)), turn)
        self._schedule: Schedule | None = None
        self._durable = False  # the open transaction holds a terminal transition
        self._commit_waiters: list[asyncio.Future[None]] = []
        self._wal_fd: int | None = None
        self.commits = 0  # transactions committed by ``commit`` (grouped writes)

    # grouped writes ------------------------------------------------------------------------------------------
    def group_commits(self, schedule: Schedule | None) -> None:
        """Group later writes: each turn's in one transaction, committed by ``schedule`` (None: each write
        commits alone, as before). Commits whatever is open first."""
        self.commit()
        self._schedule = schedule

    def _write(self, durable: bool) -> None:
        """Before a write: open the turn's transaction if none is (grouped), note a terminal transition."""
        if self._schedule is None:
            return
        if not self._db.in_transaction:
            self._db.execute("BEGIN")
            self._schedule(self.commit)
        self._durable = self._durable or durable

    def commit(self) -> None:
        """Commit the open transaction (fsyncing the WAL after it when it holds a terminal transition and
        ``sync`` is ``terminal``: what ``synchronous=FULL`` does, which cannot be switched inside a transaction)."""
        waiters, self._commit_waiters = self._commit_waiters, []
        error: BaseException | None = None
        if self._db.in_transaction:
            durable, self._durable = self._durable, False
            try:
                self._db.execute("COMMIT")
                self.commits += 1
                if durable and self.sync == "terminal":
                    self._sync_wal()
            except (sqlite3.Error, OSError) as exc:
                log.error("committing the job store failed: %s", exc)
                error = exc
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
        for fut in waiters:
            if not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)

    def _sync_wal(self) -> None:
        path = self.path + "-wal"
        if self._wal_fd is not None and os.fstat(self._wal_fd).st_ino != _inode(path):
            os.close(self._wal_fd)  # a new WAL file since: sync that one
            self._wal_fd = None
        if self._wal_fd is None:
            self._wal_fd = os.open(path, os.O_RDONLY)
        os.fdatasync(self._wal_fd)

    async def committed(self) -> None:
        """Returns once every write made so far is committed (at once when none is pending)."""
        if self._schedule is None or not self._db.in_transaction:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commit_waiters.append(fut)
        await fut

    def set_sync(self, sync: SyncMode) -> None:
        """Change the durability of later commits (see the class docs)."""
        self.sync = sync
        self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")

    @staticmethod
    def _row(job: Job) -> tuple[object, ...]:
        return (job.status.value, job.priority, job.not_before, expires_at(job), job.owner, job.to_json(),
                job.finished_at if job.status.terminal else None, job.error_detail)

    def add(self, job: Job) -> Job:
        job = job.with_changes(seq=next(self._seq))
        key = scoped_key(job.owner, job.idempotency_key) if job.idempotency_key is not None else None
        self._write(job.status.terminal)
        turn = self._turns.take(job.owner, job.priority)
        try:
            self._db.execute(
                "INSERT INTO jobs (status, priority, not_before, expires_at, owner, data, finished_at, error_detail,"
                " id, seq, idempotency_key, turn) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*self._row(job), job.id, job.seq, key, turn),
            )
        except sqlite3.IntegrityError:
            existing = self.by_key(job.idempotency_key, job.owner) if job.idempotency_key is not None else None
            if existing is None:
                raise
            raise DuplicateKey(existing) from None
        self.open.track(job, turn)
        return job

    def put(self, job: Job) -> None:
        if self._schedule is not None:
            self._write(job.status.terminal)
            self._update(job)
            return
        durable = self.sync == "terminal" and job.status.terminal
        if durable:
            self._db.execute("PRAGMA synchronous=FULL")  # this commit fsyncs the WAL
        try:
            self._update(job)
        finally:
            if durable:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def _update(self, job: Job) -> None:
        cur = self._db.execute(
            "UPDATE jobs SET status=?, priority=?, not_before=?, expires_at=?, owner=?, data=?, finished_at=?,"
            " error_detail=? WHERE id=?",
            (*self._row(job), job.id),
        )
        if cur.rowcount != 1:
            raise KeyError(job.id)
        self.open.track(job)

    def _one(self, sql: str, arg: object) -> Job | None:
        row = self._db.execute(sql, (arg,)).fetchone()
        return Job.from_dict(json.loads(row[0])) if row else None

    def get(self, job_id: str) -> Job | None:
        job = self.open.get(job_id)
        return job if job is not None else self._one("SELECT data FROM jobs WHERE id=?", job_id)

    def by_key(self, idempotency_key: str, owner: str | None = None) -> Job | None:
        return self._one("SELECT data FROM jobs WHERE idempotency_key=?", scoped_key(owner, idempotency_key))

    def list(
        self, statuses: Iterable[JobStatus] | None = None, owner: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        return _parse(self._db.execute(*_list_query(statuses, owner, limit, offset)).fetchall())

    def next_queued(self, now: float, limit: int) -> builtins.list[Job]:
        picked = self.open.next_queued(now, limit)
        self._turns.read((j.priority, self.open.turn(j.id)) for j in picked)
        return picked

    def counts(self) -> dict[JobStatus, int]:
        """One indexed count per status (each reads only its own range of the status index)."""
        return {s: self.count(s) for s in JobStatus}

    def count(self, status: JobStatus) -> int:
        if not status.terminal:
            return self.open.count(status)
        return int(self._db.execute("SELECT COUNT(*) FROM jobs WHERE status=?", (status.value,)).fetchone()[0])

    def count_owned(self, status: JobStatus, owner: str) -> int:
        if not status.terminal:
            return self.open.count_owned(status, owner)
        row = self._db.execute("SELECT COUNT(*) FROM jobs WHERE owner=? AND status=?", (owner, status.value))
        return int(row.fetchone()[0])

    def expired(self, now: float, limit: int) -> builtins.list[Job]:
        rows = self._db.execute(
            "SELECT data FROM jobs WHERE status='queued' AND expires_at<=? ORDER BY seq LIMIT ?", (now, limit)
        ).fetchall()
        return _parse(rows)

    def prune(self, finished_before: float | None, keep: int | None, limit: int = PRUNE_BATCH) -> int:
        ids: dict[str, None] = {}
        done = f"finished_at IS NOT NULL AND status IN ({TERMINAL_SQL})"
        if finished_before is not None:
            rows = self._db.execute(f"SELECT id FROM jobs WHERE {done} AND finished_at<? ORDER BY finished_at LIMIT ?",
                                    (finished_before, limit))
            ids.update((r[0], None) for r in rows)
        if keep is not None and len(ids) < limit:
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE {done} ORDER BY finished_at DESC, seq DESC LIMIT ? OFFSET ?",
                (limit - len(ids), keep))
            ids.update((r[0], None) for r in rows)
        if not ids:
            return 0
        self._write(False)
        cur = self._db.execute(f"DELETE FROM jobs WHERE id IN ({','.join('?' * len(ids))}) AND {done}", tuple(ids))
        if cur.rowcount and self.path != ":memory:":
            self.commit()  # (grouped writes: a checkpoint runs outside a transaction)
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL's older copies of those pages go too
        return cur.rowcount

    def reader(self) -> StoreReader:
        """A read-only view on its own connection, for listing from a worker thread (off the event loop)."""
        if self._reader is None:
            self._reader = StoreReader(self.path)
        return self._reader

    def close(self) -> None:
        self.group_commits(None)
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        if self._reader is not None:
            self._reader.close()
        self._db.close()


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return -1


class StoreReader:
    """Read-only queries on a connection of their own: safe to call from any one thread at a time (locked),
    concurrently with the writer (WAL readers see the last commit)."""

    def __init__(self, path: str) -> None:
        uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro"
        self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()

    def list(
        self, statuses: Iterable[JobStatus] | None = None, owner: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        with self._lock:
            rows = self._db.execute(*_list_query(statuses, owner, limit, offset)).fetchall()
        return _parse(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
