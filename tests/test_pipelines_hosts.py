"""Pipelines on two hosts (the server's own and a namespace host, 2 sim engines each): where affinity puts a step,
and a pipeline that loses an engine, then a host, under a running step.

Affinity: three slow steps after ``a``, each with affinity to it, queued together when ``a`` succeeds: the first runs
on a's engine (free: ``placement`` "engine"); the second waits ``affinity_wait_s`` for a's engine, which stays busy,
then runs on the other engine of a's host ("host"); the third waits as long, then runs on the other host (a's host
is full: "anywhere"). A step whose engine frees within the wait runs there. Engine loss: the engine of a running step is SIGKILLed;
the step's job runs again elsewhere, the pipeline succeeds and no step that had succeeded runs again. Host loss: the
host of a running step is cut off the network; once it is taken as lost the step's job runs again on the other host,
with the same outcome. The tests share one supervisor and run in this order (the last one cuts the host off).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from hostfixtures import host_settings, serving_on, start_agent, until
from llmsup.supervisor.core.engine_state import EngineState
from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.pipelines.records import Pipeline, PipelineStatus, StepStatus
from llmsup.supervisor.pipelines.spec import PipelineSpec, StepSpec
from llmsup.supervisor.service import Supervisor
from nethosts import HostNet, TestHost, namespaces_unavailable

pytestmark = [pytest.mark.real, pytest.mark.timeout(240)]
SLOW = "[sim:slow=0.05]"  # 0.05 s a token: a step of 80 tokens runs for 4 s


@dataclass
class TwoHosts:
    net: HostNet
    hosta: TestHost
    sup: Supervisor


@pytest.fixture(scope="module")
async def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TwoHosts]:
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(f"namespace test hosts unavailable: {reason}")
    base = tmp_path_factory.mktemp("pipeline-hosts")
    net = HostNet.create(base)
    sup: Supervisor | None = None
    try:
        hosta = net.add_host("hosta")
        sup = Supervisor(host_settings(net, base / "run", engines=2, standby=0, max_attempts=3))
        await sup.start()
        start_agent(net, hosta, sup, engines=2)
        await until(lambda: len(serving_on(sup, "hosta")) == 2 and len(sup.pool.serving()) == 4, 90,
                    "2 engines serving on each host")
        yield TwoHosts(net, hosta, sup)
    finally:
        if sup is not None:
            await sup.stop()
        net.cleanup()


def create(sup: Supervisor, *steps: StepSpec) -> Pipeline:
    p, _ = sup.pipelines.create(PipelineSpec(steps, deadline_s=120), None, None, sup.clock())
    return p


async def ended(sup: Supervisor, p: Pipeline, timeout: float = 60) -> Pipeline:
    await until(lambda: sup.pipelines.get(p.id).status.terminal, timeout, f"pipeline {p.id} ended")
    return sup.pipelines.get(p.id)


def jobs_of(sup: Supervisor, p: Pipeline) -> list[Job]:
    return [sup.get(j) for step in p.steps for j in step.job_ids]


async def running_step(sup: Supervisor, p: Pipeline, name: str) -> Job:
    """The job of step ``name`` once it runs and has streamed a token (its engine is at work on it)."""
    def job() -> Job | None:
        ids = sup.pipelines.get(p.id).step(name).job_ids
        found = sup.get(ids[0]) if ids else None
        return found if found is not None and found.status is JobStatus.RUNNING and found.engine is not None \
            and sup.running_job(found.id) is not None and sup.running_job(found.id).pieces else None

    return await until(job, 30, f"step {name} running")


def chain() -> tuple[StepSpec, ...]:
    """a -> b (slow: runs for seconds) -> c, each prompt holding the output before it."""
    return (StepSpec("a", "one two", max_tokens=2),
            StepSpec("b", "{{a}} " + SLOW, after=("a",), max_tokens=80),
            StepSpec("c", "end {{b}}", after=("b",), max_tokens=1))


def assert_no_step_ran_twice(sup: Supervisor, done: Pipeline, a_job: Job) -> None:
    assert done.status is PipelineStatus.SUCCEEDED, done
    assert [len(s.job_ids) for s in done.steps] == [1, 1, 1]  # one job per step: none made again
    a, b, c = jobs_of(sup, done)
    assert a.id == a_job.id and a.attempts == 1 and a.finished_at == a_job.finished_at  # done before: not run again
    assert c.attempts == 1 and c.prompt == f"end {b.output}" and b.status is JobStatus.SUCCEEDED


async def test_affinity_runs_on_the_engine_else_its_host_else_anywhere(two_hosts: TwoHosts) -> None:
    sup = two_hosts.sup
    hosts = {e.id: e.host for e in sup.pool}
    assert sorted(set(hosts.values())) == sorted({"hosta", socket.gethostname()})
    for _ in range(2):  # whichever host a lands on
        followers = [StepSpec(name, "{{a}} " + SLOW, after=("a",), affinity="a", max_tokens=40)
                     for name in ("near", "host", "far")]
        done = await ended(sup, create(sup, StepSpec("a", "x y z", max_tokens=3), *followers))
        assert done.status is PipelineStatus.SUCCEEDED, done
        a, near, host, far = done.steps
        assert a.engine is not None and near.engine is not None and host.engine is not None and far.engine is not None
        assert (near.placement, near.engine["id"]) == ("engine", a.engine["id"])
        assert host.placement == "host" and host.engine["host"] == a.engine["host"]
        assert host.engine["id"] != a.engine["id"]
        assert far.placement == "anywhere" and far.engine["host"] != a.engine["host"]
        affinity = {j.affinity.id for j in jobs_of(sup, done)[1:] if j.affinity is not None}
        assert affinity == {a.engine["id"]}  # each follower's job asked for a's engine


async def test_affinity_waits_for_its_engine_when_it_frees_within_the_wait(two_hosts: TwoHosts) -> None:
    """A step whose engine is busy with a sibling waits for it (here up to 30 s, so that no load on this machine
    makes it fall back) and runs there as soon as the sibling ends, while three other engines are free."""
    sup = two_hosts.sup
    before = sup.settings.affinity_wait_s
    sup.settings.affinity_wait_s = 30.0
    try:
        done = await ended(sup, create(sup, StepSpec("a", "x y z", max_tokens=3),
                                       StepSpec("first", "{{a}} " + SLOW, after=("a",), affinity="a", max_tokens=10),
                                       StepSpec("then", "{{a}}", after=("a",), affinity="a", max_tokens=3)))
    finally:
        sup.settings.affinity_wait_s = before
    assert done.status is PipelineStatus.SUCCEEDED, done
    a, first, then = done.steps
    assert a.engine is not None and first.placement == then.placement == "engine"
    first_job, then_job = jobs_of(sup, done)[1:]
    assert first_job.engine is not None and then_job.engine is not None
    assert first_job.engine.id == then_job.engine.id == a.engine["id"]
    assert then_job.started_at is not None and first_job.finished_at is not None
    assert then_job.started_at >= first_job.finished_at  # it waited for the engine, not for a free one


async def test_a_pipeline_survives_the_loss_of_its_running_steps_engine(two_hosts: TwoHosts) -> None:
    sup = two_hosts.sup
    remote = serving_on(sup, "hosta")
    for engine_id in remote:  # the steps run on this host's engines, whose pids this test can signal
        sup.drain_engine(engine_id)
    try:
        p = create(sup, *chain())
        b_job = await running_step(sup, p, "b")
        a_job = sup.get(sup.pipelines.get(p.id).step("a").job_ids[0])
        killed = sup.find_engine(b_job.engine.id)
        assert killed.host == socket.gethostname()
        os.kill(killed.pid, signal.SIGKILL)
        done = await ended(sup, p)
    finally:
        for engine_id in remote:
            if sup.pool.get(engine_id) is not None:
                sup.drain_engine(engine_id, drain=False)
    assert_no_step_ran_twice(sup, done, a_job)
    b = sup.get(done.step("b").job_ids[0])
    assert killed.id in b.lost_engines and b.engine is not None and b.engine.id != killed.id
    assert b.attempts == 2  # an engine lost costs an attempt
    assert done.step("b").status is StepStatus.SUCCEEDED and done.step("b").engine["id"] == b.engine.id
    await until(lambda: len(sup.pool.serving()) == 4, 60, "the killed engine replaced")


async def test_a_pipeline_survives_the_loss_of_its_running_steps_host(two_hosts: TwoHosts) -> None:
    sup, net = two_hosts.sup, two_hosts.net
    local = [e.id for e in sup.pool if e.host != "hosta" and e.state in (EngineState.IDLE, EngineState.BUSY)]
    for engine_id in local:  # the steps run on hosta until it is cut off
        sup.drain_engine(engine_id)
    p = create(sup, *chain())
    b_job = await running_step(sup, p, "b")
    a_job = sup.get(sup.pipelines.get(p.id).step("a").job_ids[0])
    assert b_job.engine is not None and b_job.engine.host == "hosta"
    for engine_id in local:
        sup.drain_engine(engine_id, drain=False)
    host_key = sup.find_engine(b_job.engine.id).host_key
    net.cut(two_hosts.hosta)
    try:
        await until(lambda: sup.hosts[host_key].lost_at is not None, 20, "hosta taken as lost")
        done = await ended(sup, p)
    finally:
        net.restore(two_hosts.hosta)
    assert_no_step_ran_twice(sup, done, a_job)
    b = sup.get(done.step("b").job_ids[0])
    assert b.engine is not None and b.engine.host != "hosta" and b_job.engine.id in b.lost_engines
    assert b.attempts == 1  # a host lost costs none
