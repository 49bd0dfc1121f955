"""Deadlines (docs/deadlines.md): none by default on the OpenAI routes, 60 s on the native API, an explicit one always
applies; the stall limit stops a job that produces no token for --stall-timeout-s as a runaway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import make_settings
from fakes import FakeClock, FakeDriver
from llmsup.engines.messages import JobResult
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.owner import SupervisorCore
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.settings import Settings
from llmsup.supervisor.store import MemoryStore
from support.inprocess_server import InProcessServer, serving_in_process

S = JobStatus
pytestmark = pytest.mark.timeout(60)


def test_which_deadline_a_job_gets(tmp_path: Path) -> None:
    plain = Settings(run_dir=tmp_path)
    assert plain.default_deadline_s(unbounded=True) is None and plain.default_deadline_s() == 60.0
    assert Settings(run_dir=tmp_path, max_deadline_s=10).default_deadline_s() == 10.0  # never above the ceiling
    given = Settings(run_dir=tmp_path, deadline_s=5)  # --deadline: every job without its own, the OpenAI ones too
    assert given.default_deadline_s(unbounded=True) == 5.0 and given.default_deadline_s() == 5.0
    assert Settings(run_dir=tmp_path).stall_timeout_s == 30.0


# the core on a fake clock: the stall limit moves on with each token --------------------------------------------------
def started_core(tmp_path: Path, **settings: object) -> tuple[SupervisorCore, FakeDriver, FakeClock]:
    clock, driver = FakeClock(), FakeDriver()
    core = SupervisorCore(make_settings(tmp_path, engines=1, standby=0, **settings), MemoryStore(), driver)
    core.configure_engines({"backend": "sim"})
    core.start_engines(1, clock.now)
    (_, set_id, _gpu), = driver.verbs("launch")
    core.report(ev.EngineRegistered(0), clock.now)
    core.report(ev.EngineIdentified(0, ev.EngineIdentity("h", "h|b", 1000, "", set_id)), clock.now)
    core.report(ev.EngineLoaded(0, {"backend": "sim"}), clock.now)
    return core, driver, clock


def tick_to(core: SupervisorCore, clock: FakeClock, after: float) -> None:
    """The core's timers at ``after`` seconds past the job's start (the clock starts at 100)."""
    clock.mono = 100.0 + after
    core.tick(clock.now)


def test_a_job_without_a_deadline_is_stopped_only_when_it_stalls(tmp_path: Path) -> None:
    core, driver, clock = started_core(tmp_path, deadline_s=None, stall_timeout_s=5.0)
    job = core.submit(JobRequest(prompt="p", unbounded=True), clock.now).job
    assert job.deadline_s is None
    assert core.dispatch_ready(clock.now) == 1
    run = core.running_job(job.id)
    assert run is not None
    core.report(ev.TaskStarted(run.key), clock.now)
    for second in range(1, 200):  # a token every second for 199 s: far past any old default, never stopped
        tick_to(core, clock, float(second))
        core.report(ev.TokenPiece(run.key, second - 1, "x "), clock.now)
    assert not driver.verbs("sigint")
    tick_to(core, clock, 199 + 4.9)
    assert not driver.verbs("sigint")
    tick_to(core, clock, 199 + 5.0)  # five seconds without a token: a runaway
    assert driver.verbs("sigint")
    core.report(ev.JobReply(run.key, result=JobResult("interrupted", "x " * 199, 199)), clock.now)
    done = core.get(job.id)
    assert done.status is S.TIMED_OUT and done.tokens == 199
    assert "no token for 5s" in (done.error or "")


def test_an_explicit_deadline_still_applies_and_the_stall_limit_can_be_off(tmp_path: Path) -> None:
    core, driver, clock = started_core(tmp_path, deadline_s=None, stall_timeout_s=0)
    job = core.submit(JobRequest(prompt="p", deadline_s=3.0, unbounded=True), clock.now).job
    assert core.dispatch_ready(clock.now) == 1
    run = core.running_job(job.id)
    assert run is not None
    core.report(ev.TaskStarted(run.key), clock.now)
    tick_to(core, clock, 2.9)  # no token at all, but no stall limit
    assert not driver.verbs("sigint")
    tick_to(core, clock, 3.0)
    assert driver.verbs("sigint")


# the OpenAI routes and the native API on the in-process server -------------------------------------------------------
@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    """No server deadline, a 1 s ceiling on asked deadlines, a 1 s stall limit, 10 ms a token."""
    with serving_in_process(tmp_path_factory.mktemp("deadlines"), engines=1, deadline_s=None, max_deadline_s=1.0,
                            stall_timeout_s=1.0, sim_token_s=0.01) as live:
        yield live


def job_of(client: httpx.Client, answer: dict[str, object]) -> dict[str, object]:
    job_id = answer["llmsup"]["job_id"]  # type: ignore[index]
    body: dict[str, object] = client.get(f"/v1/jobs/{job_id}").json()
    return body


def test_an_openai_answer_longer_than_any_deadline_finishes_with_length(srv: InProcessServer) -> None:
    with srv.client() as client:
        answer = client.post("/v1/completions", json={"prompt": "a long story", "max_tokens": 200,
                                                      "ignore_eos": True}).json()
        assert answer["choices"][0]["finish_reason"] == "length", answer
        job = job_of(client, answer)
        assert job["deadline_s"] is None and job["tokens"] == 200
        assert job["finished_at"] and job["started_at"]  # ran 2 s: twice the longest deadline one may ask


def test_an_openai_job_that_stalls_is_stopped_as_a_runaway(srv: InProcessServer) -> None:
    with srv.client() as client:
        answer = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "spin [sim:hang]"}], "max_tokens": 50}).json()
        assert answer["choices"][0]["finish_reason"] == "timeout", answer
        job = job_of(client, answer)
        assert job["status"] == "timed_out" and "no token for 1s" in str(job["error"])


def test_the_native_api_keeps_its_default_and_an_asked_deadline_applies(srv: InProcessServer) -> None:
    with srv.client() as client:
        native = client.post("/v1/jobs", json={"prompt": "hello", "max_tokens": 2}).json()
        assert native["deadline_s"] == 1.0  # 60 s, at most max_deadline_s
        cut = client.post("/v1/completions", json={"prompt": "a long story", "max_tokens": 500, "ignore_eos": True,
                                                   "deadline_s": 0.3}).json()
        assert cut["choices"][0]["finish_reason"] == "timeout"


@pytest.mark.real
async def test_a_stalled_job_on_an_engine_process_is_interrupted_and_the_engine_serves_on(tmp_path: Path) -> None:
    """Real engine processes: a job spinning without a token is SIGINTed at the stall limit, its partial text
    kept, and the same engine takes the next job."""
    from llmsup.supervisor.service import Supervisor

    sup = Supervisor(make_settings(tmp_path / "run", engines=1, standby=0, deadline_s=None, stall_timeout_s=1.0))
    try:
        await sup.start()
        hang = sup.submit(JobRequest("spin here [sim:hang]", unbounded=True)).job
        nxt = sup.submit(JobRequest("after the runaway", max_tokens=5, unbounded=True)).job
        hang = await sup.wait(hang.id, 30)
        assert hang.status is S.TIMED_OUT and hang.deadline_s is None and hang.output.startswith("spin here")
        assert "no token for 1s" in (hang.error or "")
        nxt = await sup.wait(nxt.id, 30)
        assert nxt.status is S.SUCCEEDED and nxt.engine is not None and hang.engine is not None
        assert nxt.engine.pid == hang.engine.pid
    finally:
        await sup.stop()
