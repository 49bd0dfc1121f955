"""Affinity in the supervisor core (fake cluster and clock): a job that names an engine (a pipeline step's, the engine
of the step before) runs there when it has a free slot; when that engine is busy the job waits up to
``affinity_wait_s`` from its submission for it (the jobs behind it go meanwhile), then runs on another engine of
that host, else anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import FakeClock
from llmsup.engines.messages import JobResult
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.owner import SupervisorCore
from llmsup.supervisor.core.requests import JobRequest
from test_core_hosts import remote_core
from test_core_ladder import key_of

pytestmark = pytest.mark.timeout(10)
WAIT = 0.5


def two_hosts(tmp_path: Path, wait: float = WAIT) -> tuple[SupervisorCore, FakeClock]:
    """Engines 0 and 1 on host "h" (the server's), 10 and 11 on host "remote"."""
    core, _, clock = remote_core(tmp_path, remote_engines=2, local_engines=2)
    core.settings.affinity_wait_s = wait
    assert sorted((e.host, e.id) for e in core.pool) == [("h", 0), ("h", 1), ("remote", 10), ("remote", 11)]
    return core, clock


def submit(core: SupervisorCore, clock: FakeClock, name: str, near: int | None = None) -> str:
    affinity = core.find_engine(near).ref.__dict__ if near is not None else None
    return core.submit(JobRequest(name, max_tokens=1, affinity=affinity), clock.now).job.id


def engine_of(core: SupervisorCore, job_id: str) -> int | None:
    run = core.running_job(job_id)
    return run.engine.id if run is not None else None


def finish(core: SupervisorCore, clock: FakeClock, job_id: str) -> None:
    core.report(ev.JobReply(key_of(core, job_id), result=JobResult("completed", "x", 1)), clock.now)


def test_the_engine_when_free_else_its_host_else_anywhere(tmp_path: Path) -> None:
    core, clock = two_hosts(tmp_path, wait=0.0)  # no wait: placed at once
    jobs = [submit(core, clock, f"j{i}", near=10) for i in range(3)]
    assert core.dispatch_ready(clock.now) == 3
    assert [engine_of(core, j) for j in jobs][:2] == [10, 11]  # its engine, then the other one of its host
    assert core.find_engine(engine_of(core, jobs[2]) or 0).host == "h"  # its host full: anywhere


def test_a_busy_engine_is_waited_for_and_the_jobs_behind_go_first(tmp_path: Path) -> None:
    core, clock = two_hosts(tmp_path)
    busy = submit(core, clock, "busy", near=10)
    assert core.dispatch_ready(clock.now) == 1 and engine_of(core, busy) == 10
    follower = submit(core, clock, "follower", near=10)
    behind = submit(core, clock, "behind")
    assert core.dispatch_ready(clock.now) == 1  # the follower waits for engine 10; the job behind it does not
    assert engine_of(core, follower) is None and engine_of(core, behind) is not None
    clock.advance(WAIT / 2)
    assert core.dispatch_ready(clock.now) == 0  # still within its wait, three engines free
    finish(core, clock, busy)
    assert core.dispatch_ready(clock.now) == 1 and engine_of(core, follower) == 10  # freed in time: its engine


def test_after_the_wait_it_runs_on_the_host_then_anywhere(tmp_path: Path) -> None:
    core, clock = two_hosts(tmp_path)
    busy = submit(core, clock, "busy", near=10)
    assert core.dispatch_ready(clock.now) == 1
    follower = submit(core, clock, "follower", near=10)
    assert core.dispatch_ready(clock.now) == 0
    clock.advance(WAIT)
    assert core.dispatch_ready(clock.now) == 1 and engine_of(core, follower) == 11  # its host's other engine
    last = submit(core, clock, "last", near=10)
    clock.advance(WAIT)
    assert core.dispatch_ready(clock.now) == 1 and core.find_engine(engine_of(core, last) or 0).host == "h"
    assert engine_of(core, busy) == 10


def test_no_wait_for_an_engine_that_takes_no_jobs(tmp_path: Path) -> None:
    core, clock = two_hosts(tmp_path)
    ref = core.find_engine(10).ref.__dict__
    core.drain_engine(10)  # takes no job: nothing to wait for
    job = core.submit(JobRequest("to a draining engine", max_tokens=1, affinity=ref), clock.now).job.id
    assert core.dispatch_ready(clock.now) == 1 and engine_of(core, job) == 11
