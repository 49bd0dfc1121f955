"""Fair shares between owners at the same priority, on both stores: one owner's long queue does not hold another
owner's jobs back until it is empty; priority still comes first; the order survives a restart (SQLite)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmsup.supervisor.core.jobs import EngineRef, Job, JobStatus
from llmsup.supervisor.core.transitions import transition
from llmsup.supervisor.store import JobStore, MemoryStore, SQLiteStore
from support.waiting import eventually_async

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    s: JobStore = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "jobs.sqlite")
    yield s
    s.close()


def start_next(store: JobStore) -> Job:
    """What dispatch does with one free slot: the first ready job, marked running."""
    (job,) = store.next_queued(now=1.0, limit=1)
    store.put(transition(job, JobStatus.RUNNING, 1.0, engine=EngineRef(0, "h", 1, "cpu")))
    return job


def test_owners_take_turns_at_the_same_priority(store: JobStore) -> None:
    flood = [store.add(Job(prompt=f"a{i}", owner="alice")) for i in range(200)]
    assert [start_next(store).id for _ in range(5)] == [j.id for j in flood[:5]]
    bob = [store.add(Job(prompt=f"b{i}", owner="bob")) for i in range(3)]
    admin = store.add(Job(prompt="admin's"))  # no owner: an owner of its own
    started = [start_next(store) for _ in range(8)]  # bob's and the admin's: not after alice's 195 other jobs
    assert {j.id for j in started if j.owner != "alice"} == {*(j.id for j in bob), admin.id}
    assert [j.id for j in store.next_queued(now=1.0, limit=3)] == [j.id for j in flood[9:12]]  # then alice's


def test_priority_comes_before_turns_and_an_owners_jobs_stay_in_order(store: JobStore) -> None:
    for i in range(50):
        store.add(Job(prompt=f"a{i}", owner="alice"))
    urgent = store.add(Job(prompt="urgent", owner="alice", priority=5))
    bob = [store.add(Job(prompt=f"b{i}", owner="bob")) for i in range(4)]
    picked = store.next_queued(now=1.0, limit=10)
    assert picked[0].id == urgent.id
    assert [j.id for j in picked if j.owner == "bob"] == [j.id for j in bob]  # FIFO within an owner
    assert [j.owner for j in picked[1:9]] == ["alice", "bob"] * 4  # alternating


def test_the_turns_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = SQLiteStore(path)
    for i in range(100):
        store.add(Job(prompt=f"a{i}", owner="alice"))
    for _ in range(3):
        start_next(store)
    store.close()
    store = SQLiteStore(path)
    try:
        late = store.add(Job(prompt="late", owner="bob"))
        assert late.id in [j.id for j in store.next_queued(now=1.0, limit=3)]
    finally:
        store.close()


async def test_callers_without_a_key_are_one_owner_with_a_quota(tmp_path: Path) -> None:
    from test_web_guards import open_app

    async for a in open_app(tmp_path / "run", require_api_keys="off", owner_queue_max=2):
        first = await a.http.post("/v1/jobs", json={"prompt": "x"})
        assert first.status_code == 202
        waiting = asyncio.ensure_future(a.http.post("/v1/completions", json={"prompt": "y", "max_tokens": 1}))
        try:  # an OpenAI route's job: the same owner
            await eventually_async(lambda sup=a.sup: len(sup.list([JobStatus.QUEUED])) == 2, timeout=10,
                                   what="the second job queued")
            third = await a.http.post("/v1/jobs", json={"prompt": "z"})
            assert third.status_code == 429 and "'keyless' has 2 jobs queued" in third.text
            assert {j.owner for j in a.sup.list([JobStatus.QUEUED])} == {"keyless"}
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        listed = (await a.http.get("/v1/jobs")).json()["jobs"]
        assert len(listed) == 2  # keys off: every caller still sees every job
        admin = await a.http.post("/v1/jobs", json={"prompt": "admin"}, headers=a.admin)
        assert admin.status_code == 202 and admin.json()["owner"] is None  # the admin: no quota
