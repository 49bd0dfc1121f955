"""Grouped commits of the SQLite store (a loop turn's writes in one transaction) and the open jobs kept in memory."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from llmsup.supervisor.core.jobs import EngineRef, Job, JobStatus
from llmsup.supervisor.core.transitions import transition
from llmsup.supervisor.store import MemoryStore, SQLiteStore
from llmsup.supervisor.store.openjobs import OpenJobs

pytestmark = pytest.mark.timeout(30)
ENGINE = EngineRef(1, "h", 2, "0")


def stored_status(path: Path, job_id: str) -> str | None:
    """The status another connection reads: what is committed."""
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
        return row[0] if row else None
    finally:
        db.close()


async def test_a_turns_writes_are_one_transaction_committed_at_its_end(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = SQLiteStore(path)
    store.group_commits(asyncio.get_running_loop().call_soon)
    jobs = [store.add(Job(prompt=f"p{i}")) for i in range(50)]
    store.put(transition(jobs[0], JobStatus.RUNNING, 1.0, engine=ENGINE))
    assert stored_status(path, jobs[0].id) is None  # not committed yet: the turn goes on
    assert store.get(jobs[0].id).status is JobStatus.RUNNING  # the writer reads its own writes
    await store.committed()
    assert store.commits == 1
    assert stored_status(path, jobs[0].id) == "running" and stored_status(path, jobs[49].id) == "queued"
    await store.committed()  # nothing pending: at once
    assert store.commits == 1
    store.close()


async def test_a_turn_with_a_terminal_transition_fsyncs_the_wal_once(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    path = tmp_path / "jobs.sqlite"
    store = SQLiteStore(path)
    store.group_commits(asyncio.get_running_loop().call_soon)
    jobs = [store.add(Job(prompt=f"p{i}")) for i in range(3)]
    await store.committed()
    assert synced == []  # submits only: not fsynced (as synchronous=NORMAL)
    running = [transition(j, JobStatus.RUNNING, 1.0, engine=ENGINE) for j in jobs]
    for job in running:
        store.put(job)
    for job in running:
        store.put(transition(job, JobStatus.SUCCEEDED, 2.0))
    await store.committed()
    assert len(synced) == 1  # three outcomes, one fsync after the commit that holds them
    assert os.fstat(synced[0]).st_ino == os.stat(str(path) + "-wal").st_ino
    assert stored_status(path, jobs[2].id) == "succeeded"
    store.close()


async def test_ungrouped_store_commits_each_write(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = SQLiteStore(path)
    job = store.add(Job(prompt="x"))
    assert stored_status(path, job.id) == "queued"
    await store.committed()
    store.close()


async def test_close_commits_what_is_open(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = SQLiteStore(path)
    store.group_commits(asyncio.get_running_loop().call_soon)
    job = store.add(Job(prompt="x"))
    store.close()
    assert stored_status(path, job.id) == "queued"


def test_open_jobs_are_reloaded_when_the_store_opens(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = SQLiteStore(path)
    a, b, c = (store.add(Job(prompt=p, priority=i)) for i, p in enumerate("abc"))
    store.put(transition(b, JobStatus.RUNNING, 1.0, engine=ENGINE))
    store.put(transition(transition(c, JobStatus.RUNNING, 1.0, engine=ENGINE), JobStatus.SUCCEEDED, 2.0))
    store.close()
    again = SQLiteStore(path)
    assert again.count(JobStatus.QUEUED) == 1 and again.count(JobStatus.RUNNING) == 1
    assert [j.id for j in again.next_queued(10.0, 10)] == [a.id]
    assert again.get(c.id).status is JobStatus.SUCCEEDED  # a finished job is read from its row
    again.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_queue_order_requeue_and_backoff(tmp_path: Path, kind: str) -> None:
    store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "jobs.sqlite")
    low = store.add(Job(prompt="low", priority=0, owner="alice"))
    high = store.add(Job(prompt="high", priority=5, owner="alice"))
    later = store.add(Job(prompt="later", priority=0, owner="bob"))
    assert [j.id for j in store.next_queued(10.0, 10)] == [high.id, low.id, later.id]
    assert [j.id for j in store.next_queued(10.0, 1)] == [high.id]  # asked again: still queued, same order
    run = transition(high, JobStatus.RUNNING, 10.0, engine=ENGINE)
    store.put(run)
    assert store.count(JobStatus.QUEUED) == 2 and store.count_owned(JobStatus.QUEUED, "alice") == 1
    store.put(transition(run, JobStatus.QUEUED, 11.0, not_before=20.0))  # back, with a backoff
    assert [j.id for j in store.next_queued(15.0, 10)] == [low.id, later.id]
    assert [j.id for j in store.next_queued(20.0, 10)] == [high.id, low.id, later.id]
    assert store.count_owned(JobStatus.QUEUED, "alice") == 2 and store.count(JobStatus.RUNNING) == 0


def test_stale_entries_do_not_pile_up() -> None:
    index = OpenJobs()
    for i in range(20_000):
        job = Job(prompt="x", seq=i + 1)
        index.track(job)
        assert index.next_queued(1.0, 1) == [job]
        index.track(transition(transition(job, JobStatus.RUNNING, 1.0, engine=ENGINE), JobStatus.SUCCEEDED, 2.0))
    assert index.jobs == {} and index.count(JobStatus.QUEUED) == 0
    assert len(index._ready) + len(index._later) <= 1024 + 1
