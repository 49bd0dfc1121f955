"""Real backends (transformers, vLLM on CPU) through the whole supervisor and a real cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from conftest import make_settings
from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from support.waiting import eventually_async

S = JobStatus
pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(240)]


async def started(tmp_path: Path, tiny_model: str, **kw: object) -> Supervisor:
    sup = Supervisor(make_settings(tmp_path / "run", engines=1, model=tiny_model, engine_start_timeout_s=180, **kw))
    await sup.start()
    return sup


def submit(sup: Supervisor, prompt: str, **kw: object):  # type: ignore[no-untyped-def]
    return sup.submit(JobRequest(prompt, **kw)).job  # type: ignore[arg-type]


@pytest.fixture(params=["transformers", "vllm"])
async def single(request: pytest.FixtureRequest, tmp_path: Path, tiny_model: str) -> AsyncIterator[Supervisor]:
    sup = await started(tmp_path, tiny_model, backend=request.param, slots_per_engine=1)
    try:
        yield sup
    finally:
        await sup.stop()


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


@pytest.mark.timeout(300)
async def test_vllm_recycle_leaves_no_orphans(tmp_path: Path, tiny_model: str) -> None:
    sup = await started(tmp_path, tiny_model, backend="vllm", slots_per_engine=1, max_jobs_per_engine=1,
                        engine_options={"multiprocessing": True})
    try:
        engine = next(iter(sup.pool))
        children = psutil.Process(engine.pid).children(recursive=True)
        assert len(children) >= 2  # EngineCore and its worker (and the nanny)
        job = await sup.wait(submit(sup, "Hello", max_tokens=4).id, 120)
        assert job.status is S.SUCCEEDED
        await eventually_async(lambda: any(e.pid != engine.pid for e in sup.pool.serving()), 200)
        await eventually_async(lambda: not any(_exists(p) for p in children), 20,
                               what=f"vLLM's processes to exit: {[p.pid for p in children]}")
        assert not psutil.pid_exists(engine.pid) or psutil.Process(engine.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        await sup.stop()


def _exists(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
