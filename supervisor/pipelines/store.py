"""Pipelines' records, kept durably: an SQLite file beside the job store, and an in-memory twin with the same
contract (``tests/test_pipelines.py`` runs one contract test on both). Every change of a record is written here
before it is acted on (its jobs submitted or cancelled), as jobs' transitions are."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from llmsup.supervisor.pipelines.records import Pipeline
from llmsup.supervisor.rundir import create_private, tighten
from llmsup.supervisor.store import scoped_key


class DuplicatePipeline(Exception):
    """An idempotency key is already taken; ``existing`` is the pipeline that holds it."""

    def __init__(self, existing: Pipeline) -> None:
        super().__init__(existing.id)
        self.existing = existing


class PipelineStore(Protocol):
    def add(self, p: Pipeline) -> Pipeline:
        """Store a new pipeline; ``DuplicatePipeline`` (with the existing one) when its owner's key is taken."""

    def put(self, p: Pipeline) -> None:
        """Replace a pipeline's record."""

    def get(self, pipeline_id: str) -> Pipeline | None: ...

    def active(self) -> list[Pipeline]:
        """Pipelines not ended yet, in the order they were added."""

    def recent(self, owner: str | None, limit: int) -> list[Pipeline]:
        """The latest added first; ``owner`` None: everyone's."""

    def close(self) -> None: ...


class MemoryPipelineStore:
    def __init__(self) -> None:
        self._rows: dict[str, Pipeline] = {}
        self._keys: dict[str, str] = {}

    def add(self, p: Pipeline) -> Pipeline:
        if p.idempotency_key is not None:
            key = scoped_key(p.owner, p.idempotency_key)
            if key in self._keys:
                raise DuplicatePipeline(self._rows[self._keys[key]])
            self._keys[key] = p.id
        self._rows[p.id] = p
        return p

    def put(self, p: Pipeline) -> None:
        self._rows[p.id] = p

    def get(self, pipeline_id: str) -> Pipeline | None:
        return self._rows.get(pipeline_id)

    def active(self) -> list[Pipeline]:
        return [p for p in self._rows.values() if not p.status.terminal]  # insertion order, as SQLite's seq

    def recent(self, owner: str | None, limit: int) -> list[Pipeline]:
        rows = [p for p in self._rows.values() if owner is None or p.owner == owner]
        return rows[::-1][:limit]

    def close(self) -> None:
        return None


SCHEMA = """
CREATE TABLE IF NOT EXISTS pipelines (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    idempotency_key TEXT UNIQUE,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pipelines_active ON pipelines (status, seq);
CREATE INDEX IF NOT EXISTS pipelines_owner ON pipelines (owner, seq);
"""
ENDED_SQL = "('succeeded','failed','timed_out','cancelled')"


class SQLitePipelineStore:
    """One SQLite file (WAL), 0600. A new pipeline and an ended one are written with ``synchronous=FULL`` (they
    survive a power loss: the client was told it exists, or how it ended); the changes between with ``NORMAL`` (no
    fsync: a power loss may take the latest of them back, and the pipeline then goes on from an older record. That
    is safe because its steps' jobs carry idempotency keys: a step submitted again finds the job it made when that
    job's record survived, and a job's end is always synced, so a step that succeeded is never run again; a job
    lost with the power is run again, as a running job is after a restart). A later FULL commit syncs the earlier
    writes with it."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            create_private(Path(self.path))
            for side in ("-wal", "-shm", "-journal"):
                tighten(Path(self.path + side))
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA secure_delete=ON")  # deleted steps' text is zeroed, not left in free pages
        self._db.execute("PRAGMA synchronous=NORMAL")  # FULL for the writes that must survive a power loss
        self._db.executescript(SCHEMA)
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM pipelines").fetchone()
        self._seq = int(row[0])

    def add(self, p: Pipeline) -> Pipeline:
        key = None if p.idempotency_key is None else scoped_key(p.owner, p.idempotency_key)
        with self._lock:
            self._seq += 1
            self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute("INSERT INTO pipelines (id, seq, status, owner, idempotency_key, data) "
                                 "VALUES (?, ?, ?, ?, ?, ?)",
                                 (p.id, self._seq, p.status.value, p.owner, key, json.dumps(p.to_dict())))
            except sqlite3.IntegrityError:
                row = self._db.execute("SELECT data FROM pipelines WHERE idempotency_key = ?", (key,)).fetchone()
                if row is None:
                    raise
                raise DuplicatePipeline(Pipeline.from_dict(json.loads(row[0]))) from None
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")
        return p

    def put(self, p: Pipeline) -> None:
        with self._lock:
            if p.status.terminal:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute("UPDATE pipelines SET status = ?, data = ? WHERE id = ?",
                                 (p.status.value, json.dumps(p.to_dict()), p.id))
            finally:
                if p.status.terminal:
                    self._db.execute("PRAGMA synchronous=NORMAL")

    def get(self, pipeline_id: str) -> Pipeline | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM pipelines WHERE id = ?", (pipeline_id,)).fetchone()
        return None if row is None else Pipeline.from_dict(json.loads(row[0]))

    def active(self) -> list[Pipeline]:
        with self._lock:
            rows = self._db.execute(f"SELECT data FROM pipelines WHERE status NOT IN {ENDED_SQL} ORDER BY seq").fetchall()
        return [Pipeline.from_dict(json.loads(r[0])) for r in rows]

    def recent(self, owner: str | None, limit: int) -> list[Pipeline]:
        with self._lock:
            if owner is None:
                rows = self._db.execute("SELECT data FROM pipelines ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._db.execute("SELECT data FROM pipelines WHERE owner = ? ORDER BY seq DESC LIMIT ?",
                                        (owner, limit)).fetchall()
        return [Pipeline.from_dict(json.loads(r[0])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
