"""Batched vLLM engines: continuous batching with per-request deadlines, on the CPU."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from support.clusters import SharedSupervisors
from support.waiting import eventually_async

S = JobStatus
pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(240)]
LONG = {"ignore_eos": True}


@pytest.fixture
async def sup(shared_supervisors: SharedSupervisors, tiny_model: str) -> AsyncIterator[Supervisor]:  # noqa: F811
    """One batched vLLM engine, shared by this module's tests (``support.clusters``: reset between them)."""
    supervisor = await shared_supervisors.take(dict(
        engines=1, backend="vllm", model=tiny_model, slots_per_engine=16, engine_test_hooks=True,
        engine_start_timeout_s=180, kill_grace_s=1.5,
    ))
    try:
        yield supervisor
    finally:
        await shared_supervisors.give_back(supervisor)


def submit(sup: Supervisor, prompt: str, **kw: object):  # type: ignore[no-untyped-def]
    return sup.submit(JobRequest(prompt, **kw)).job  # type: ignore[arg-type]


async def test_batch_overlaps_deadlines_kill_and_late_joiner(sup: Supervisor) -> None:
    # 16 concurrent jobs on one engine: all complete with real tokens, overlapping in time
    jobs = [submit(sup, f"Story number {i}", max_tokens=64, extra=LONG) for i in range(16)]
    done = [await sup.wait(j.id, 120) for j in jobs]
    assert all(j.status is S.SUCCEEDED and j.tokens == 64 and j.output for j in done)
    assert max(j.started_at for j in done) < min(j.finished_at for j in done)

    # a batch of 8 with 2 runaways (2 s deadline): they time out alone, the 6 others complete in full
    runaways = [submit(sup, f"Runaway {i}", max_tokens=100_000, deadline_s=2.0, extra=LONG) for i in range(2)]
    others = [submit(sup, f"Normal {i}", max_tokens=400, deadline_s=120, extra=LONG) for i in range(6)]
    await eventually_async(lambda: all(sup.get(j.id).status is S.RUNNING for j in runaways + others), 30)
    late = submit(sup, "Late joiner", max_tokens=8, extra=LONG)  # joins the running batch
    late = await sup.wait(late.id, 60)
    for r in runaways:
        r = await sup.wait(r.id, 60)
        assert r.status is S.TIMED_OUT and r.tokens > 0 and r.output
        assert r.finished_at - r.started_at < 2.0 + 0.3
    kill_me = others[0]
    sup.kill(kill_me.id)
    kill_me = await sup.wait(kill_me.id, 30)
    assert kill_me.status in (S.CANCELLED, S.SUCCEEDED)
    finished = [await sup.wait(o.id, 120) for o in others[1:]]
    assert all(o.status is S.SUCCEEDED and o.tokens == 400 and o.error is None for o in finished)
    assert late.status is S.SUCCEEDED and late.finished_at < min(o.finished_at for o in finished)
    assert sup.metrics.interrupts.labels("sigint")._value.get() == 0
    assert sup.metrics.interrupts.labels("sigkill")._value.get() == 0


async def test_unresponsive_loop_sigint_then_sigkill_requeues_the_rest(sup: Supervisor) -> None:
    pid = next(iter(sup.pool)).pid
    due = submit(sup, "Due soon", max_tokens=100_000, deadline_s=1.0, extra=LONG)
    await eventually_async(lambda: sup.get(due.id).tokens > 0, 60)
    stall = submit(sup, "Stall [llmsup:stall=60]", max_tokens=4, extra=LONG)
    due = await sup.wait(due.id, 30)
    assert due.status is S.TIMED_OUT and sup.metrics.interrupts.labels("sigint")._value.get() == 1
    assert (await sup.wait(stall.id, 30)).status is S.SUCCEEDED  # the engine survived the SIGINT
    neighbours = [submit(sup, f"Neighbour {i}", max_tokens=300, deadline_s=120, extra=LONG) for i in range(3)]
    await eventually_async(lambda: all(sup.get(j.id).tokens > 0 for j in neighbours), 60)
    due2 = submit(sup, "Due again", max_tokens=100_000, deadline_s=1.0, extra=LONG)
    await eventually_async(lambda: sup.get(due2.id).status is S.RUNNING, 30)
    submit(sup, "Wedge [llmsup:stall-nosigint]", max_tokens=4, deadline_s=1.0, extra=LONG)
    due2 = await sup.wait(due2.id, 60)
    assert due2.status is S.TIMED_OUT and "killed" in due2.error
    done = [await sup.wait(j.id, 200) for j in neighbours]
    assert all(j.status is S.SUCCEEDED and j.tokens == 300 for j in done)
    assert all(j.engine.pid != pid for j in done)  # finished on the replacement engine
