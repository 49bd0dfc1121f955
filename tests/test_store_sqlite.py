"""The SQLite store alone: durable terminal writes, private files, off-loop reader, migration of old stores."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from llmsup.supervisor.core.jobs import EngineRef, Job, JobStatus
from llmsup.supervisor.core.transitions import transition
from llmsup.supervisor.store import SQLiteStore

pytestmark = pytest.mark.timeout(30)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_terminal_transitions_are_committed_with_synchronous_full(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.sqlite")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    job = store.add(Job(prompt="x"))
    running = transition(job, JobStatus.RUNNING, 1.0, engine=EngineRef(1, "h", 2, "0"))
    store.put(running)
    assert not any("synchronous" in s for s in statements)  # submit and start: NORMAL (not fsynced)
    statements.clear()
    store.put(transition(running, JobStatus.SUCCEEDED, 2.0))
    update = next(i for i, s in enumerate(statements) if s.startswith("UPDATE"))
    assert statements[update - 1] == "PRAGMA synchronous=FULL"  # this commit fsyncs the WAL
    assert statements[update + 1] == "PRAGMA synchronous=NORMAL"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # back to NORMAL
    store.close()
    full = SQLiteStore(tmp_path / "full.sqlite", sync="full")
    assert full._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    full.close()


def test_store_files_are_private(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "jobs.sqlite"
        store = SQLiteStore(path)
        store.add(Job(prompt="a secret prompt"))
        for name in ("jobs.sqlite", "jobs.sqlite-wal", "jobs.sqlite-shm"):
            assert (tmp_path / name).exists() and mode(tmp_path / name) == 0o600, name
        store.close()
        for name in ("jobs.sqlite", "jobs.sqlite-wal", "jobs.sqlite-shm"):  # left 0644 by an older llmsup
            if (tmp_path / name).exists():
                os.chmod(tmp_path / name, 0o644)
        SQLiteStore(path).close()
        assert mode(path) == 0o600
    finally:
        os.umask(old_umask)


def test_reader_lists_from_another_thread_while_the_writer_goes_on(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.sqlite")
    ids = [store.add(Job(prompt=f"p{i}", owner="alice" if i % 2 else None)).id for i in range(6)]
    out: list[list[str]] = []
    worker = threading.Thread(target=lambda: out.append([j.id for j in store.reader().list(owner="alice", limit=2)]))
    worker.start()
    worker.join(10)
    assert out == [[ids[5], ids[3]]]
    store.add(Job(prompt="later"))
    assert len(store.reader().list(limit=100)) == 7  # sees the writer's last commit
    with pytest.raises(sqlite3.OperationalError):
        store.reader()._db.execute("DELETE FROM jobs")  # read-only
    store.close()


def test_counts_are_per_status_and_complete(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.sqlite")
    store.add(Job(prompt="a"))
    job = store.add(Job(prompt="b"))
    store.put(transition(job, JobStatus.CANCELLED, 1.0))
    counts = store.counts()
    assert set(counts) == set(JobStatus) and counts[JobStatus.QUEUED] == 1 and counts[JobStatus.CANCELLED] == 1
    plan = " ".join(r[3] for r in store._db.execute("EXPLAIN QUERY PLAN SELECT COUNT(*) FROM jobs WHERE status=?", ("x",)))
    assert "USING COVERING INDEX" in plan  # no table scan
    store.close()


LEGACY_SCHEMA = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, status TEXT NOT NULL, priority INTEGER NOT NULL,
    not_before REAL NOT NULL, expires_at REAL NOT NULL, owner TEXT, idempotency_key TEXT UNIQUE, data TEXT NOT NULL);
"""


def test_a_store_of_the_previous_version_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    db = sqlite3.connect(path)
    db.executescript(LEGACY_SCHEMA)
    legacy = [  # (owner, stored key): the web layer stored owner/key for key users and the bare key otherwise
        (Job(prompt="alice's", owner="alice", idempotency_key="alice/k1", seq=1), "alice/k1"),
        (Job(prompt="keyless, aimed at alice", idempotency_key="alice/k2", seq=2), "alice/k2"),
        (Job(prompt="keyless", idempotency_key="k3", seq=3), "k3"),
    ]
    done = transition(transition(Job(prompt="done", seq=4), JobStatus.RUNNING, 5.0, engine=EngineRef(1, "h", 2, "0")),
                      JobStatus.SUCCEEDED, 7.0)
    for job, key in [*legacy, (done, None)]:
        db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (
            job.id, job.seq, job.status.value, job.priority, 0.0, 600.0, job.owner, key, json.dumps(job.to_dict())))
    db.commit()
    db.close()
    store = SQLiteStore(path)
    alice, aimed, keyless = (j for j, _ in legacy)
    assert store.by_key("k1", "alice").id == alice.id and store.get(alice.id).idempotency_key == "k1"
    assert store.by_key("k2", "alice") is None  # a keyless job never answers alice's key
    assert store.by_key("alice/k2").id == aimed.id and store.by_key("k3").id == keyless.id
    assert store.prune(finished_before=8.0, keep=None) == 1  # finished_at filled from the records
    store.close()
    assert SQLiteStore(path).by_key("k1", "alice").id == alice.id  # migrated once; reopening changes nothing
