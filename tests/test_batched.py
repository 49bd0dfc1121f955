"""Batched engines (slots > 1) on a real cluster with the sim backend's batching."""

from __future__ import annotations

import asyncio

import pytest

from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from support.waiting import eventually_async

S = JobStatus
pytestmark = [pytest.mark.real, pytest.mark.timeout(90)]
BATCH = dict(engines=1, slots_per_engine=8, sim_token_s=0.01, engine_test_hooks=True)


def submit(sup: Supervisor, prompt: str, **kw: object):  # type: ignore[no-untyped-def]
    return sup.submit(JobRequest(prompt, **kw)).job  # type: ignore[arg-type]


@pytest.mark.settings(**BATCH)
async def test_jobs_share_one_engine_concurrently(sup: Supervisor) -> None:
    jobs = [submit(sup, f"job {i}", max_tokens=30) for i in range(8)]
    done = [await sup.wait(j.id, 30) for j in jobs]
    assert all(j.status is S.SUCCEEDED and j.tokens == 30 for j in done)
    assert len({j.engine.pid for j in done}) == 1
    # they overlapped: every job started before any finished
    assert max(j.started_at for j in done) < min(j.finished_at for j in done)


@pytest.mark.settings(**BATCH)
async def test_runaways_in_a_batch_time_out_alone(sup: Supervisor) -> None:
    runaways = [submit(sup, f"runaway {i}", max_tokens=100_000, deadline_s=1.0) for i in range(2)]
    others = [submit(sup, f"normal {i}", max_tokens=150, deadline_s=30) for i in range(6)]
    for r in runaways:
        r = await sup.wait(r.id, 20)
        assert r.status is S.TIMED_OUT and r.output.startswith("runaway") and r.tokens > 10
        assert r.finished_at - r.started_at < 1.0 + 0.15
    for o in others:
        o = await sup.wait(o.id, 30)
        assert o.status is S.SUCCEEDED and o.tokens == 150 and o.error is None
    assert sup.metrics.interrupts.labels("sigint")._value.get() == 0  # the engine enforced the deadlines itself


@pytest.mark.settings(**BATCH)
async def test_job_submitted_mid_batch_starts_before_the_batch_ends(sup: Supervisor) -> None:
    batch = [submit(sup, f"long {i}", max_tokens=200) for i in range(4)]
    await eventually_async(lambda: sup.get(batch[0].id).tokens >= 5)
    late = await sup.wait(submit(sup, "late", max_tokens=5).id, 20)
    firsts = [await sup.wait(j.id, 30) for j in batch]
    assert late.status is S.SUCCEEDED
    assert late.finished_at < min(j.finished_at for j in firsts)


@pytest.mark.settings(**BATCH)
async def test_admin_kill_of_one_job_leaves_the_batch_running(sup: Supervisor) -> None:
    jobs = [submit(sup, f"job {i}", max_tokens=150) for i in range(4)]
    await eventually_async(lambda: sup.get(jobs[0].id).tokens >= 3)
    sup.kill(jobs[0].id)
    killed = await sup.wait(jobs[0].id, 10)
    assert killed.status is S.CANCELLED and killed.error == "killed by admin" and killed.tokens > 0
    rest = [await sup.wait(j.id, 30) for j in jobs[1:]]
    assert all(j.status is S.SUCCEEDED and j.tokens == 150 for j in rest)
    assert sup.metrics.interrupts.labels("sigint")._value.get() == 0


@pytest.mark.settings(**BATCH)
async def test_unresponsive_loop_gets_sigint_and_keeps_serving(sup: Supervisor) -> None:
    due = submit(sup, "due soon", max_tokens=100_000, deadline_s=0.5)
    await eventually_async(lambda: sup.get(due.id).status is S.RUNNING)
    stall = submit(sup, "stall the loop [llmsup:stall=30]", max_tokens=5, deadline_s=30)
    due = await sup.wait(due.id, 20)
    assert due.status is S.TIMED_OUT
    assert sup.metrics.interrupts.labels("sigint")._value.get() >= 1
    stall = await sup.wait(stall.id, 20)
    assert stall.status is S.SUCCEEDED and stall.tokens == 5 and stall.engine.pid == due.engine.pid
    assert sup.metrics.interrupts.labels("sigkill")._value.get() == 0


@pytest.mark.settings(**BATCH, max_attempts=1)
async def test_sigkill_path_requeues_the_batch_without_charging(sup: Supervisor) -> None:
    neighbours = [submit(sup, f"neighbour {i}", max_tokens=300, deadline_s=60) for i in range(3)]
    await eventually_async(lambda: all(sup.get(j.id).status is S.RUNNING for j in neighbours))
    due = submit(sup, "due soon", max_tokens=100_000, deadline_s=0.5)
    await eventually_async(lambda: sup.get(due.id).status is S.RUNNING)
    submit(sup, "wedge [llmsup:stall-nosigint]", max_tokens=5, deadline_s=0.5)
    due = await sup.wait(due.id, 20)
    assert due.status is S.TIMED_OUT and "killed" in due.error
    done = [await sup.wait(j.id, 60) for j in neighbours]
    # max_attempts=1: only an uncharged retry can make them succeed on the replacement engine
    assert all(j.status is S.SUCCEEDED and j.tokens == 300 for j in done)
    assert len({j.engine.pid for j in done}) == 1 and done[0].engine.pid != due.engine.pid


@pytest.mark.settings(**BATCH)
async def test_tokens_stream_with_their_logprobs_while_the_job_runs(sup: Supervisor) -> None:
    sub = sup.hub.subscribe(None)
    try:
        asked = submit(sup, "w x y [sim:slow=0.02]", max_tokens=40, extra={"logprobs": 1})
        plain = submit(sup, "w x y", max_tokens=5)
        events: dict[str, list[dict]] = {asked.id: [], plain.id: []}
        ended: set[str] = set()
        while ended != set(events):
            async with asyncio.timeout(20):
                ev = await sub.get()
            assert ev is not None
            if ev["job_id"] in events:
                events[ev["job_id"]].append(ev)
                if ev["type"] == "status" and JobStatus(ev["status"]).terminal:
                    ended.add(ev["job_id"])
                elif ev["type"] == "token" and ev["job_id"] == asked.id and ev["seq"] == 2:
                    live = sup.get(asked.id)  # a running job's view holds the entries streamed so far
                    assert live.status is S.RUNNING and [e.token for e in live.logprobs][:3] == ["w ", "x ", "y "]
    finally:
        sub.close()
    tokens = [ev for ev in events[asked.id] if ev["type"] == "token"]
    assert events[asked.id][-1]["type"] == "status"  # every token came before the end
    assert [ev["logprob"].token for ev in tokens] == [ev["text"] for ev in tokens] == ["w ", "x ", "y "] * 13 + ["w "]
    assert all(ev["logprob"].top[0].token == ev["text"] and ev["token_id"] is None for ev in tokens)  # no ids asked
    done = await sup.wait(asked.id, 10)
    assert done.status is S.SUCCEEDED and done.logprobs == tuple(ev["logprob"] for ev in tokens)
    assert all(ev["logprob"] is None and ev["token_id"] is None for ev in events[plain.id] if ev["type"] == "token")
