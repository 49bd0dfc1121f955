"""One contract test, run against the SQLite store and its in-memory twin."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmsup.supervisor.jobs import EngineRef, Job, JobStatus
from llmsup.supervisor.store import DuplicateKey, JobStore, MemoryStore, SQLiteStore
from llmsup.supervisor.transitions import transition

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    s: JobStore = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "jobs.sqlite")
    yield s
    s.close()


def test_add_assigns_increasing_seq_and_round_trips(store: JobStore) -> None:
    a = store.add(Job(prompt="a", created_at=1.0))
    b = store.add(Job(prompt="b", created_at=2.0))
    assert b.seq > a.seq > 0
    assert store.get(a.id) == a
    assert store.get("nope") is None


def test_idempotency_key_is_unique(store: JobStore) -> None:
    first = store.add(Job(prompt="a", idempotency_key="k1"))
    with pytest.raises(DuplicateKey) as err:
        store.add(Job(prompt="b", idempotency_key="k1"))
    assert err.value.existing.id == first.id
    assert store.by_key("k1") == first
    assert store.by_key("k2") is None


def test_next_queued_orders_by_priority_then_fifo_and_respects_not_before(store: JobStore) -> None:
    low = store.add(Job(prompt="low", priority=0))
    high1 = store.add(Job(prompt="high1", priority=5))
    later = store.add(Job(prompt="later", priority=9, not_before=100.0))
    high2 = store.add(Job(prompt="high2", priority=5))
    assert [j.id for j in store.next_queued(now=50.0, limit=10)] == [high1.id, high2.id, low.id]
    assert [j.id for j in store.next_queued(now=100.0, limit=2)] == [later.id, high1.id]


def test_put_replaces_record_and_filters_follow(store: JobStore) -> None:
    job = store.add(Job(prompt="x", owner="alice"))
    running = transition(job, JobStatus.RUNNING, 10.0, engine=EngineRef(1, "h", 42, "0"))
    store.put(running)
    assert store.get(job.id) == running
    assert store.next_queued(now=1e9, limit=10) == []
    assert [j.id for j in store.list([JobStatus.RUNNING])] == [job.id]
    assert store.list([JobStatus.QUEUED]) == []
    assert [j.id for j in store.list(owner="alice")] == [job.id]
    assert store.list(owner="bob") == []
    assert store.counts()[JobStatus.RUNNING] == 1


def test_list_is_newest_first_with_paging(store: JobStore) -> None:
    ids = [store.add(Job(prompt=str(i))).id for i in range(5)]
    assert [j.id for j in store.list(limit=2)] == ids[::-1][:2]
    assert [j.id for j in store.list(limit=2, offset=2)] == ids[::-1][2:4]


def test_put_unknown_job_raises(store: JobStore) -> None:
    with pytest.raises(KeyError):
        store.put(Job(prompt="ghost"))


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    s1 = SQLiteStore(path)
    a = s1.add(Job(prompt="a", idempotency_key="k"))
    s1.close()
    s2 = SQLiteStore(path)
    assert s2.get(a.id) == a
    b = s2.add(Job(prompt="b"))
    assert b.seq > a.seq
    s2.close()


def test_count_and_expired(store: JobStore) -> None:
    a = store.add(Job(prompt="a", created_at=100.0, queue_timeout_s=10))
    b = store.add(Job(prompt="b", created_at=100.0, queue_timeout_s=50))
    assert store.count(JobStatus.QUEUED) == 2 and store.count(JobStatus.RUNNING) == 0
    assert store.expired(now=109.0, limit=10) == []
    assert [j.id for j in store.expired(now=110.0, limit=10)] == [a.id]
    assert [j.id for j in store.expired(now=200.0, limit=10)] == [a.id, b.id]
    store.put(transition(a, JobStatus.RUNNING, 105.0, engine=EngineRef(1, "h", 2, "")))
    assert [j.id for j in store.expired(now=200.0, limit=10)] == [b.id]
