"""Retention: finished jobs are deleted by age (``retain_s``) and count (``retain_jobs``), in the background,
never a queued or running one; time is passed in."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmsup.supervisor.core.jobs import EngineRef, Job, JobStatus
from llmsup.supervisor.core.transitions import transition
from llmsup.supervisor.settings import Settings
from llmsup.supervisor.store import SQLiteStore, retention
from support.waiting import eventually_async
from test_web_guards import open_app

pytestmark = pytest.mark.timeout(30)


def finished(store: SQLiteStore, at: float) -> Job:
    job = store.add(Job(prompt="x", created_at=at - 2))
    running = transition(job, JobStatus.RUNNING, at - 1, engine=EngineRef(0, "h", 1, "cpu"))
    store.put(running)
    done = transition(running, JobStatus.SUCCEEDED, at)
    store.put(done)
    return done


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "jobs.sqlite")
    yield s
    s.close()


def test_age_is_counted_from_the_end_of_the_job(tmp_path: Path, store: SQLiteStore) -> None:
    settings = Settings(run_dir=tmp_path, retain_s=100)
    job = finished(store, at=1000.0)
    queued = store.add(Job(prompt="waiting since long ago", created_at=0.0))
    assert retention.prune_once(store, settings, now=1099.0) == 0
    assert retention.prune_once(store, settings, now=1100.5) == 1
    assert store.get(job.id) is None and store.get(queued.id) is not None
    assert retention.prune_once(store, Settings(run_dir=tmp_path), now=1e12) == 0  # off by default


async def test_a_backlog_goes_in_batches(tmp_path: Path, store: SQLiteStore) -> None:
    for i in range(7):
        finished(store, at=float(i))
    keep = finished(store, at=100.0)
    assert await retention.prune_all(store, Settings(run_dir=tmp_path, retain_jobs=1), now=0.0, limit=2) == 7
    assert [j.id for j in store.list(limit=10)] == [keep.id]


async def test_pruning_runs_in_the_background(tmp_path: Path, store: SQLiteStore) -> None:
    for i in range(3):
        finished(store, at=float(i))
    task = asyncio.ensure_future(retention.prune_forever(store, Settings(run_dir=tmp_path, retain_s=10),
                                                         clock=lambda: 1e9, every_s=0.01))
    try:
        await eventually_async(lambda: not store.count(JobStatus.SUCCEEDED), 10, "the finished jobs pruned")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_server_prunes_while_it_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "PRUNE_EVERY_S", 0.01)
    async for a in open_app(tmp_path / "run", retain_jobs=1, require_api_keys="off", started=True):
        store = a.sup.store
        for i in range(3):
            finished(store, at=float(i))
        await eventually_async(lambda s=store: s.count(JobStatus.SUCCEEDED) <= 1, 10, "all but the newest pruned")
