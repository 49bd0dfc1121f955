"""The supervisor against a real local IPyParallel cluster (sim backend)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from support.waiting import eventually_async

S = JobStatus
pytestmark = [pytest.mark.real, pytest.mark.timeout(90)]


def submit(sup: Supervisor, prompt: str, **kw: object):  # type: ignore[no-untyped-def]
    return sup.submit(JobRequest(prompt, **kw)).job  # type: ignore[arg-type]


@pytest.mark.settings(engines=1)
async def test_runaway_times_out_with_partial_output_and_engine_is_reused(sup: Supervisor) -> None:
    hang = submit(sup, "spin here [sim:hang]", deadline_s=1.0)
    nxt = submit(sup, "after the runaway", max_tokens=5)
    hang = await sup.wait(hang.id, 20)
    assert hang.status is S.TIMED_OUT
    assert hang.output.startswith("spin here") and hang.tokens > 0
    assert hang.finish_reason == "deadline"
    assert 1.0 <= hang.finished_at - hang.started_at < 1.0 + 0.5
    nxt = await sup.wait(nxt.id, 20)
    assert nxt.status is S.SUCCEEDED and nxt.tokens == 5
    assert nxt.engine.pid == hang.engine.pid  # the same engine process took the next job
    assert sup.metrics.interrupts.labels("sigkill")._value.get() == 0


async def test_sigint_proof_hang_is_killed_and_engine_replaced(sup: Supervisor) -> None:
    before = {e.pid for e in sup.pool}
    stuck = await sup.wait(submit(sup, "stuck [sim:hang-nosigint]", deadline_s=0.5).id, 30)
    assert stuck.status is S.TIMED_OUT and stuck.output.startswith("stuck")
    assert "killed" in stuck.error
    await sup.wait_for_engines(2, 30)
    after = {e.pid for e in sup.pool}
    assert stuck.engine.pid not in after and len(after) == 2 and len(after & before) == 1
    nxt = await sup.wait(submit(sup, "next job").id, 20)
    assert nxt.status is S.SUCCEEDED
    assert sup.metrics.interrupts.labels("sigkill")._value.get() == 1


@pytest.mark.settings(max_attempts=3)
async def test_crashing_job_is_retried_elsewhere_then_fails(sup: Supervisor) -> None:
    seen: list[int] = []
    job = submit(sup, "boom [sim:crash]", deadline_s=10)
    sub = sup.hub.subscribe(job.id)

    async def watch() -> None:
        while (ev := await sub.get()) is not None:
            if ev["status"] == "running" if ev["type"] == "status" else False:
                seen.append(sup.store.get(job.id).engine.id)

    watcher = asyncio.ensure_future(watch())
    job = await sup.wait(job.id, 60)
    watcher.cancel()
    assert job.status is S.FAILED and job.attempts == 3
    assert "died" in job.error and "gave up after 3 attempts" in job.error, job.error
    assert len(seen) == 3 and seen[0] != seen[1]  # the retry went to another engine
    await sup.wait_for_engines(2, 30)
    ok = await sup.wait(submit(sup, "still fine").id, 20)
    assert ok.status is S.SUCCEEDED


@pytest.mark.settings(engines=1)
async def test_cancel_queued_and_running_and_admin_kill(sup: Supervisor) -> None:
    running = submit(sup, "long [sim:slow=0.05]", max_tokens=10_000)
    queued = submit(sup, "waiting")
    await eventually_async(lambda: sup.get(running.id).status is S.RUNNING and sup.get(running.id).tokens > 0)
    assert sup.cancel(queued.id).status is S.CANCELLED  # removed at once
    sup.cancel(running.id)
    running = await sup.wait(running.id, 10)
    assert running.status is S.CANCELLED and running.output.startswith("long")
    victim = submit(sup, "victim [sim:hang]")
    await eventually_async(lambda: sup.get(victim.id).status is S.RUNNING)
    sup.kill(victim.id)
    victim = await sup.wait(victim.id, 10)
    assert victim.status is S.CANCELLED and victim.error == "killed by admin"
    assert sup.get(queued.id).attempts == 0  # never ran


@pytest.mark.settings(engines=1)
async def test_priorities_and_idempotency(sup: Supervisor) -> None:
    blocker = submit(sup, "blocker [sim:slow=0.05]", max_tokens=10)
    await eventually_async(lambda: sup.get(blocker.id).status is S.RUNNING)
    low = submit(sup, "low", priority=-1)
    mid1 = submit(sup, "mid1")
    high = submit(sup, "high", priority=10)
    mid2 = submit(sup, "mid2")
    first = sup.submit(JobRequest("keyed", idempotency_key="abc"))
    again = sup.submit(JobRequest("different prompt, same key", idempotency_key="abc"))
    assert first.created and not again.created and again.job.id == first.job.id
    jobs = [await sup.wait(j.id, 20) for j in (low, mid1, high, mid2, first.job)]
    order = sorted(jobs, key=lambda j: j.started_at)
    assert [j.prompt for j in order] == ["high", "mid1", "mid2", "keyed", "low"]


@pytest.mark.timeout(150)
@pytest.mark.settings(max_attempts=2, kill_grace_s=1.0, interrupt_grace_s=0.2)
async def test_twenty_mixed_jobs_all_end_none_lost_none_twice(sup: Supervisor) -> None:
    succeeded: Counter[str] = Counter()
    sub = sup.hub.subscribe()

    async def count() -> None:
        while (ev := await sub.get()) is not None:
            if ev["type"] == "status" and ev["status"] == "succeeded":
                succeeded[ev["job_id"]] += 1

    counter = asyncio.ensure_future(count())
    kinds = ["plain", "plain", "[sim:hang]", "plain", "[sim:crash]"] * 4
    jobs = [submit(sup, f"job {i} {k}", deadline_s=0.7, max_tokens=8) for i, k in enumerate(kinds)]
    done = [await sup.wait(j.id, 100) for j in jobs]
    counter.cancel()
    assert all(j.status.terminal for j in done)
    by_kind = Counter((k, j.status) for k, j in zip(kinds, done))
    assert by_kind[("plain", S.SUCCEEDED)] == 12
    assert by_kind[("[sim:hang]", S.TIMED_OUT)] == 4
    assert by_kind[("[sim:crash]", S.FAILED)] == 4
    assert max(succeeded.values()) == 1 and len(succeeded) == 12
    assert len(sup.store.list(limit=100)) == 20
    await sup.wait_for_engines(2, 30)


@pytest.mark.timeout(150)
@pytest.mark.settings(engines=1)
async def test_interrupts_landing_as_jobs_finish_never_hit_the_next_job(sup: Supervisor) -> None:
    """Natural run time ~= deadline, many in a row: each is followed by a control job that must succeed."""
    pid = next(iter(sup.pool)).pid
    outcomes: Counter[JobStatus] = Counter()
    for i in range(30):
        edge = submit(sup, f"edge {i} [sim:slow=0.01]", max_tokens=20, deadline_s=0.2 + (i % 5) * 0.004)
        ctrl = submit(sup, f"control {i}", max_tokens=3)
        edge = await sup.wait(edge.id, 20)
        ctrl = await sup.wait(ctrl.id, 20)
        outcomes[edge.status] += 1
        assert edge.status in (S.SUCCEEDED, S.TIMED_OUT), edge
        assert ctrl.status is S.SUCCEEDED, ctrl
        assert ctrl.engine.pid == pid  # never needed a restart
    assert sum(outcomes.values()) == 30
    assert sup.metrics.interrupts.labels("sigkill")._value.get() == 0


@pytest.mark.settings(engines=1, max_jobs_per_engine=2)
async def test_engine_recycled_after_max_jobs(sup: Supervisor) -> None:
    a = await sup.wait(submit(sup, "one").id, 20)
    b = await sup.wait(submit(sup, "two").id, 20)
    c = await sup.wait(submit(sup, "three").id, 30)
    assert a.engine.pid == b.engine.pid != c.engine.pid
    assert all(j.status is S.SUCCEEDED for j in (a, b, c))


@pytest.mark.settings(engines=1, max_engine_rss_mb=300)
async def test_engine_recycled_above_rss_ceiling(sup: Supervisor) -> None:
    fat = await sup.wait(submit(sup, "eat [sim:alloc=400]", max_tokens=2).id, 20)
    nxt = await sup.wait(submit(sup, "lean").id, 30)
    assert fat.status is nxt.status is S.SUCCEEDED
    assert fat.engine.pid != nxt.engine.pid


@pytest.mark.settings(engines=1)
async def test_error_in_generation_fails_without_retry_and_engine_survives(sup: Supervisor) -> None:
    bad = await sup.wait(submit(sup, "[sim:error]").id, 20)
    assert bad.status is S.FAILED and "scripted error" in bad.error and bad.attempts == 1
    ok = await sup.wait(submit(sup, "fine").id, 20)
    assert ok.status is S.SUCCEEDED and ok.engine.pid == bad.engine.pid


async def test_streamed_output_visible_while_running(sup: Supervisor) -> None:
    job = submit(sup, "stream me [sim:slow=0.02]", max_tokens=200)
    await eventually_async(lambda: sup.get(job.id).tokens >= 3)
    partial = sup.get(job.id)
    assert partial.status is S.RUNNING and partial.output.startswith("stream me")
    sup.cancel(job.id)
    assert (await sup.wait(job.id, 10)).status is S.CANCELLED


@pytest.mark.settings(engines=1)
async def test_dispatch_to_an_engine_that_left_requeues_without_charge(sup: Supervisor) -> None:
    """The controller dropped an engine before the pool noticed: the job goes back, uncharged, and runs."""
    from llmsup.supervisor.core.engine_state import Engine, EngineState, move

    real = next(iter(sup.pool))
    ghost = Engine(id=999, host="gone", host_key="elsewhere", pid=2**22 + 1, gpu="", set_id="")
    move(ghost, EngineState.IDLE, "a test's ghost")
    sup.pool.add(ghost)
    sup.drain_engine(real.id)
    job = submit(sup, "hello", max_tokens=3)
    await eventually_async(lambda: 999 not in sup.pool.engines)
    sup.drain_engine(real.id, drain=False)
    job = await sup.wait(job.id, 30)
    assert job.status is S.SUCCEEDED and job.attempts == 1 and job.engine.id != 999
