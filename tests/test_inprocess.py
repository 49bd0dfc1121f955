"""The in-process mode: the whole supervisor on the in-process driver and the in-memory store, no process started.

The sim backend's behaviours go through the same core and ladder as on a cluster: a runaway ends at its deadline
with what it streamed, a SIGINT-proof hang climbs to the kill and its engine is replaced, a crash is retried on
other engines, then fails; batched engines end a request at its deadline themselves. The driver alone runs on a
scheduler the test moves by hand (time passed in).
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from conftest import make_settings
from llmsup.engines.messages import JobSpec
from llmsup.engines.protocol import GenParams
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.engine_state import Engine
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.core.sim_driver import InProcessDriver
from llmsup.supervisor.inprocess import InProcessSupervisor
from llmsup.supervisor.store import MemoryStore
from support.waiting import eventually_async

S = JobStatus
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def sup(run_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[InProcessSupervisor]:
    marker = request.node.get_closest_marker("settings")
    supervisor = InProcessSupervisor(make_settings(run_dir, **(marker.kwargs if marker else {})))
    children = len(psutil.Process().children(recursive=True))
    try:
        await supervisor.start()
        assert len(psutil.Process().children(recursive=True)) == children  # no process started
        yield supervisor
    finally:
        await supervisor.stop()


async def test_it_runs_on_the_in_memory_store_and_completes_jobs(sup: InProcessSupervisor) -> None:
    assert isinstance(sup.store, MemoryStore) and isinstance(sup.driver, InProcessDriver)
    done = await sup.wait(sup.submit(JobRequest("alpha beta", max_tokens=5)).job.id, 10)
    assert done.status is S.SUCCEEDED and done.output == "alpha beta alpha beta alpha " and done.tokens == 5
    assert done.finish_reason == "length" and done.prompt_tokens == 2
    stopped = await sup.wait(sup.submit(JobRequest("one two three", max_tokens=9, stop=("three",))).job.id, 10)
    assert stopped.output == "one two " and stopped.finish_reason == "stop"


@pytest.mark.settings(engines=1)
async def test_a_runaway_ends_at_its_deadline_and_the_engine_takes_the_next_job(sup: InProcessSupervisor) -> None:
    engine = next(iter(sup.pool))
    hung = await sup.wait(sup.submit(JobRequest("a b [sim:hang]", max_tokens=50, deadline_s=0.2)).job.id, 10)
    assert hung.status is S.TIMED_OUT and hung.output == "a b a b " and hung.tokens == 4
    after = await sup.wait(sup.submit(JobRequest("next", max_tokens=2)).job.id, 10)
    assert after.status is S.SUCCEEDED and after.engine is not None and after.engine.id == engine.id


@pytest.mark.settings(engines=1)
async def test_a_sigint_proof_hang_is_killed_and_its_engine_replaced(sup: InProcessSupervisor) -> None:
    first = next(iter(sup.pool))
    job = await sup.wait(sup.submit(JobRequest("x [sim:hang-nosigint]", max_tokens=50, deadline_s=0.2)).job.id, 10)
    assert job.status is S.TIMED_OUT and job.output == "x x x x " and "killed" in (job.error or "")
    assert sup.metrics.interrupts.labels("sigkill")._value.get() == 1
    await eventually_async(lambda: [e.id for e in sup.pool.serving()] not in ([], [first.id]), 10,
                           "a replacement engine")
    assert (await sup.wait(sup.submit(JobRequest("again", max_tokens=2)).job.id, 10)).status is S.SUCCEEDED


@pytest.mark.settings(max_attempts=3)
async def test_a_crash_is_retried_on_other_engines_then_fails(sup: InProcessSupervisor) -> None:
    job = await sup.wait(sup.submit(JobRequest("c [sim:crash]", max_tokens=50)).job.id, 10)
    assert job.status is S.FAILED and job.attempts == 3 and "gave up after 3 attempts" in (job.error or "")
    await eventually_async(lambda: len(sup.pool.serving()) == 2, 10, "both engines replaced")
    failed = await sup.wait(sup.submit(JobRequest("e [sim:error]", max_tokens=5)).job.id, 10)
    assert failed.status is S.FAILED and "scripted error" in (failed.error or "") and failed.attempts == 1


@pytest.mark.settings(engines=1, slots_per_engine=4)
async def test_a_batched_engine_ends_a_request_at_its_deadline_alone(sup: InProcessSupervisor) -> None:
    runaway = sup.submit(JobRequest("r [sim:slow=0.05]", max_tokens=10_000, deadline_s=0.3)).job
    others = [sup.submit(JobRequest(f"w{i}", max_tokens=20)).job for i in range(3)]
    assert (await sup.wait(runaway.id, 10)).status is S.TIMED_OUT
    for other in others:
        assert (await sup.wait(other.id, 10)).status is S.SUCCEEDED
    assert sup.metrics.interrupts.labels("sigint")._value.get() == 0  # the engine ended it, not the watchdog


# the driver alone, on a scheduler moved by hand -----------------------------------------------------------------
@dataclass
class ManualScheduler:
    """``schedule(delay, callback)``; ``advance(seconds)`` runs what falls due, in time order."""

    now: float = 0.0
    _queue: list[tuple[float, int, Callable[[], None], list[bool]]] = field(default_factory=list)
    _seq: itertools.count = field(default_factory=itertools.count)

    def __call__(self, delay: float, callback: Callable[[], None]) -> _Handle:
        cancelled = [False]
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), callback, cancelled))
        return _Handle(cancelled)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._queue and self._queue[0][0] <= end:
            when, _, callback, cancelled = heapq.heappop(self._queue)
            self.now = when
            if not cancelled[0]:
                callback()
        self.now = end


@dataclass
class _Handle:
    flag: list[bool]

    def cancel(self) -> None:
        self.flag[0] = True


def engine_of(driver: InProcessDriver, reports: list[ev.Report], clock: ManualScheduler) -> Engine:
    set_id = driver.launch("")
    clock.advance(0)
    registered = next(r for r in reports if isinstance(r, ev.EngineRegistered))
    driver.identify(registered.engine_id)
    clock.advance(0)
    ident = next(r for r in reports if isinstance(r, ev.EngineIdentified)).identity
    assert ident.engine_set == set_id and ident.pid > 4_194_304 and not psutil.pid_exists(ident.pid)
    return Engine(id=registered.engine_id, host=ident.host, host_key=ident.host_key, pid=ident.pid, gpu="",
                  set_id=set_id)


def test_tokens_come_at_their_pace_and_a_probe_waits_behind_the_job() -> None:
    clock, reports = ManualScheduler(), []
    driver = InProcessDriver(reports.append, clock, token_s=0.1)
    engine = engine_of(driver, reports, clock)
    reports.clear()
    driver.dispatch(engine, "k1", JobSpec("k1", "a b c", GenParams(max_tokens=3)), 30)
    driver.probe(engine, "k1")
    clock.advance(0.25)
    assert [type(r).__name__ for r in reports] == ["TaskStarted", "TokenPiece", "TokenPiece"]
    clock.advance(0.1)
    assert [type(r).__name__ for r in reports[3:]] == ["TokenPiece", "JobReply", "ProbeAnswered"]
    reply = reports[4]
    assert isinstance(reply, ev.JobReply) and reply.result is not None and reply.result.text == "a b c "
    assert reply.result.outcome == "completed" and os.getpid() != engine.pid


def test_sigint_reaches_a_python_hang_but_not_a_masked_one() -> None:
    clock, reports = ManualScheduler(), []
    driver = InProcessDriver(reports.append, clock, token_s=0.01)
    engine = engine_of(driver, reports, clock)
    reports.clear()
    driver.dispatch(engine, "h", JobSpec("h", "x [sim:hang]", GenParams(max_tokens=50)), 30)
    clock.advance(10)  # hung after its 4 tokens: nothing more comes
    assert sum(isinstance(r, ev.TokenPiece) for r in reports) == 4 and not any(isinstance(r, ev.JobReply)
                                                                                for r in reports)
    driver.sigint(engine, "h")
    clock.advance(0)
    reply = reports[-1]
    assert isinstance(reports[-2], ev.SigintDelivered) and isinstance(reply, ev.JobReply) and reply.result is not None
    assert reply.result.outcome == "interrupted" and reply.result.tokens == 4
    reports.clear()
    driver.dispatch(engine, "n", JobSpec("n", "x [sim:hang-nosigint]", GenParams(max_tokens=50)), 30)
    clock.advance(10)
    driver.sigint(engine, "n")
    driver.probe(engine, "n")
    clock.advance(10)
    assert not any(isinstance(r, (ev.JobReply, ev.ProbeAnswered)) for r in reports)
    driver.kill(engine)
    clock.advance(0)
    assert [type(r).__name__ for r in reports[-3:]] == ["EngineKilled", "JobReply", "EngineUnregistered"]
    assert driver.engine_ids() == set()
