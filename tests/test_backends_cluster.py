"""Real backends (transformers, vLLM on CPU) through the whole supervisor and a real cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from support.clusters import SharedSupervisors
from support.waiting import eventually_async

S = JobStatus
pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(240)]


def single_engine(tiny_model: str, **kw: object) -> dict[str, object]:
    """Settings overrides: one engine of ``backend`` on the tiny model."""
    return dict(engines=1, model=tiny_model, engine_start_timeout_s=180, **kw)


def submit(sup: Supervisor, prompt: str, **kw: object):  # type: ignore[no-untyped-def]
    return sup.submit(JobRequest(prompt, **kw)).job  # type: ignore[arg-type]


@pytest.fixture(params=["transformers", "vllm"])
async def single(request: pytest.FixtureRequest, shared_supervisors: SharedSupervisors,
                 tiny_model: str) -> AsyncIterator[Supervisor]:  # noqa: F811
    """One engine of the backend, shared by this module's tests of that backend (reset between them)."""
    sup = await shared_supervisors.take(single_engine(tiny_model, backend=request.param, slots_per_engine=1))
    try:
        yield sup
    finally:
        await shared_supervisors.give_back(sup)


async def test_generate_timeout_reuse_and_cancel(single: Supervisor) -> None:
    sup = single
    normal = await sup.wait(submit(sup, "The quick brown fox", max_tokens=24).id, 60)
    assert normal.status is S.SUCCEEDED and normal.tokens == 24 and normal.output.strip()
    assert normal.finish_reason == "length"
    runaway = submit(sup, "Once upon a time", max_tokens=100_000, deadline_s=2.0, extra={"ignore_eos": True})
    nxt = submit(sup, "Next please", max_tokens=8)
    runaway = await sup.wait(runaway.id, 60)
    assert runaway.status is S.TIMED_OUT and runaway.tokens > 10 and runaway.output
    assert 2.0 <= runaway.finished_at - runaway.started_at < 2.0 + 0.25
    nxt = await sup.wait(nxt.id, 60)
    assert nxt.status is S.SUCCEEDED and nxt.tokens == 8
    assert nxt.engine.pid == runaway.engine.pid  # interrupted, not replaced
    assert nxt.started_at - (runaway.started_at + 2.0) < 0.25  # engine free within the latency target
    victim = submit(sup, "Cancel me", max_tokens=100_000, extra={"ignore_eos": True})
    await eventually_async(lambda: sup.get(victim.id).tokens >= 5, 60)
    sup.cancel(victim.id)
    victim = await sup.wait(victim.id, 30)
    assert victim.status is S.CANCELLED and victim.tokens >= 5
    after = await sup.wait(submit(sup, "Still alive", max_tokens=4).id, 60)
    assert after.status is S.SUCCEEDED and after.engine.pid == victim.engine.pid
    assert sup.metrics.interrupts.labels("sigkill")._value.get() == 0


@pytest.mark.parametrize("single", ["vllm"], indirect=True)
async def test_a_vllm_engine_logs_vllm_records_and_its_warm_up_to_its_file(single: Supervisor) -> None:
    engine = next(iter(single.pool))
    text = Path(engine.log_file).read_text()
    phases = [line.split("engine start, ")[1].split(":")[0] for line in text.splitlines() if "engine start, " in line]
    assert phases == ["start", "load", "warm-up", "ready"]
    assert " vllm." in text  # vLLM's own records (its logger does not propagate: routed by its logging config)


@pytest.mark.timeout(300)
async def test_vllm_recycle_leaves_no_orphans(shared_supervisors: SharedSupervisors, tiny_model: str) -> None:  # noqa: F811
    sup = await shared_supervisors.take(single_engine(tiny_model, backend="vllm", slots_per_engine=1, max_jobs_per_engine=1,
                                                      engine_options={"multiprocessing": True}))
    try:
        engine = next(iter(sup.pool))
        process = psutil.Process(engine.pid)
        children = process.children(recursive=True)
        assert len(children) >= 2  # EngineCore and its worker (and the nanny)
        job = await sup.wait(submit(sup, "Hello", max_tokens=4).id, 120)
        assert job.status is S.SUCCEEDED
        # recycled: out of the pool (its replacement is launched then; that it serves is the sim tests' part)
        await eventually_async(lambda: engine.id not in sup.pool.engines, 120, what="the engine to be recycled")
        await eventually_async(lambda: not any(_exists(p) for p in [process, *children]), 20,
                               what=f"the engine and vLLM's processes to exit: {[p.pid for p in [process, *children]]}")
    finally:
        await shared_supervisors.close()  # its replacement is still loading: nothing to share


def _exists(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
