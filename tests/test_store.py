"""One contract test, run against the SQLite store and its in-memory twin."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmsup.supervisor.core.jobs import EngineRef, Job, JobStatus
from llmsup.supervisor.core.transitions import transition
from llmsup.supervisor.store import DuplicateKey, JobStore, MemoryStore, SQLiteStore

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


# idempotency keys are per owner ------------------------------------------------------------------------------


def test_idempotency_keys_are_scoped_per_owner(store: JobStore) -> None:
    alice = store.add(Job(prompt="a", owner="alice", idempotency_key="k1"))
    bob = store.add(Job(prompt="b", owner="bob", idempotency_key="k1"))  # same key, other owner: a new job
    nobody = store.add(Job(prompt="c", idempotency_key="k1"))  # no owner (admin / keys off): an owner of its own
    assert len({alice.id, bob.id, nobody.id}) == 3
    assert store.by_key("k1", "alice") == alice and store.by_key("k1", "bob") == bob and store.by_key("k1") == nobody
    # the old stored form was "owner/key" for owners and the bare key otherwise: a keyless "alice/k1" found alice's job
    assert store.by_key("alice/k1") is None
    assert store.add(Job(prompt="d", idempotency_key="alice/k1")).owner is None
    with pytest.raises(DuplicateKey) as err:
        store.add(Job(prompt="e", owner="alice", idempotency_key="k1"))
    assert err.value.existing.id == alice.id
    assert store.get(alice.id).idempotency_key == "k1"  # the record keeps the key as its client sent it


def test_count_owned(store: JobStore) -> None:
    for owner in ("alice", "alice", "bob", None):
        store.add(Job(prompt="x", owner=owner))
    assert store.count_owned(JobStatus.QUEUED, "alice") == 2 and store.count_owned(JobStatus.QUEUED, "bob") == 1
    assert store.count_owned(JobStatus.RUNNING, "alice") == 0


# retention -----------------------------------------------------------------------------------------------------


def _finished(store: JobStore, prompt: str, at: float, status: JobStatus = JobStatus.SUCCEEDED) -> Job:
    job = store.add(Job(prompt=prompt, created_at=at - 1))
    running = transition(job, JobStatus.RUNNING, at - 0.5, engine=EngineRef(1, "h", 2, "0"))
    store.put(running)
    done = transition(running, status, at)
    store.put(done)
    return done


def test_prune_by_age_and_count_never_touches_queued_or_running(store: JobStore) -> None:
    old = [_finished(store, f"old{i}", at=100.0 + i) for i in range(3)]
    queued = store.add(Job(prompt="queued, ancient", created_at=1.0))
    running = store.add(Job(prompt="running, ancient", created_at=1.0))
    store.put(transition(running, JobStatus.RUNNING, 2.0, engine=EngineRef(1, "h", 2, "0")))
    new = [_finished(store, f"new{i}", at=1000.0 + i, status=JobStatus.TIMED_OUT) for i in range(3)]
    assert store.prune(finished_before=None, keep=None) == 0
    assert store.prune(finished_before=101.5, keep=None) == 2  # ended at 100 and 101
    assert store.get(old[0].id) is None and store.get(old[1].id) is None and store.get(old[2].id) is not None
    assert store.prune(finished_before=None, keep=2) == 2  # 4 finished left: the two oldest go
    left = {j.id for j in store.list(limit=100)}
    assert left == {queued.id, running.id, new[1].id, new[2].id}
    assert store.prune(finished_before=1e12, keep=0, limit=1) == 1  # batches
    assert store.prune(finished_before=1e12, keep=0) == 1
    assert {j.id for j in store.list(limit=100)} == {queued.id, running.id}


def test_pruned_keys_can_be_used_again(store: JobStore) -> None:
    job = store.add(Job(prompt="a", owner="alice", idempotency_key="k"))
    store.put(transition(transition(job, JobStatus.RUNNING, 1.0, engine=EngineRef(1, "h", 2, "0")),
                         JobStatus.SUCCEEDED, 2.0))
    assert store.prune(finished_before=10.0, keep=None) == 1
    assert store.by_key("k", "alice") is None
    assert store.add(Job(prompt="b", owner="alice", idempotency_key="k")).id != job.id
