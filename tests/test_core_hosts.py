"""Host loss in the supervisor core, on a fake cluster with a fake clock: a host none of whose engines (nor its join
agent) is heard for host_loss_s is lost; its jobs run again elsewhere, not charged an attempt; what the lost host
still sends is dropped; when it is heard again its old engines are fenced (its agent replaces them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import FakeClock, FakeDriver
from llmsup.engines.messages import JobResult
from llmsup.engines.protocol import TokenLogprob
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.engine_state import Engine, EngineState
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.owner import SupervisorCore
from llmsup.supervisor.core.requests import JobRequest
from test_core_ladder import make_core, tick_to

S = JobStatus
E = EngineState
LOSS_S = 3.0
AGENT = "host:remote:1"
pytestmark = pytest.mark.timeout(10)


def remote_core(tmp_path: Path, remote_engines: int = 2, local_engines: int = 1, loss_s: float = LOSS_S) -> tuple[
        SupervisorCore, FakeDriver, FakeClock]:
    """``local_engines`` of the server's own, and ``remote_engines`` from a join agent on host "remote"."""
    core, driver, clock = make_core(tmp_path, engines=local_engines, host_loss_s=loss_s)
    agent_beat(core, clock, pids=tuple(range(100, 100 + remote_engines)), engines=remote_engines)
    for i in range(remote_engines):
        join_engine(core, clock, 10 + i, pid=100 + i)
    return core, driver, clock


def agent_beat(core: SupervisorCore, clock: FakeClock, pids: tuple[int, ...], engines: int = 2,
               standby: int = 0) -> None:
    core.report(ev.HostHeard(AGENT, "remote", "remote|boot", 0, engines, standby, pids), clock.now)


def join_engine(core: SupervisorCore, clock: FakeClock, engine_id: int, pid: int) -> Engine:
    core.report(ev.EngineRegistered(engine_id), clock.now)
    ident = ev.EngineIdentity(host="remote", host_key="remote|boot", pid=pid, gpu="")
    core.report(ev.EngineIdentified(engine_id, ident), clock.now)
    core.report(ev.EngineLoaded(engine_id, {"backend": "sim"}), clock.now)
    return core.find_engine(engine_id)


def start_on(core: SupervisorCore, clock: FakeClock, engine_id: int, deadline_s: float = 10.0,
             first: TokenLogprob | None = None) -> str:
    """Submit one job and dispatch it to ``engine_id`` (the others drained meanwhile); its first piece comes with
    ``first`` (its id and logprob entry) when given."""
    drained = [e for e in core.pool if e.id != engine_id and e.state is E.IDLE]
    for e in drained:
        core.drain_engine(e.id)
    job = core.submit(JobRequest("p", deadline_s=deadline_s), clock.now).job
    assert core.dispatch_ready(clock.now) == 1
    for e in drained:
        core.drain_engine(e.id, drain=False)
    run = core.running_job(job.id)
    assert run is not None and run.engine.id == engine_id
    core.report(ev.TaskStarted(run.key), clock.now)
    core.report(ev.TokenPiece(run.key, 0, "partial ", token_id=first.token_id if first else None, logprob=first),
                clock.now)
    return job.id


def beat_all(core: SupervisorCore, clock: FakeClock, engine_ids: list[int]) -> None:
    for eid in engine_ids:
        core.report(ev.EngineBeat(eid), clock.now)


def test_a_silent_host_is_lost_and_its_job_runs_again_uncharged(tmp_path: Path) -> None:
    core, driver, clock = remote_core(tmp_path)
    job_id = start_on(core, clock, 10)
    old_key = core.running_job(job_id).key  # type: ignore[union-attr]
    tick_to(core, clock, clock.mono + LOSS_S - 0.1)
    beat_all(core, clock, [0])  # the server's own engine beats; the remote host says nothing
    core.check_hosts(clock.now)
    assert core.hosts["remote|boot"].lost_at is None  # not yet
    tick_to(core, clock, clock.mono + 0.2)
    core.check_hosts(clock.now)
    host = core.hosts["remote|boot"]
    assert host.lost_at is not None and host.losses == 1 and sorted(host.fenced) == [10, 11]
    assert core.pool.get(10) is None and core.pool.get(11) is None
    job = core.get(job_id)
    assert job.status is S.QUEUED and job.attempts == 0 and "host remote lost" in (job.error or "")
    assert driver.verbs("launch")[1:] == []  # a join agent's engines are its own to replace
    # the job runs again on the server's own engine, under a new key; the lost host's late answer is dropped
    clock.advance(1.0)
    assert core.dispatch_ready(clock.now) == 1
    run = core.running_job(job_id)
    assert run is not None and run.engine.id == 0 and run.key != old_key
    core.report(ev.JobReply(old_key, result=JobResult("completed", "late from the lost host", 3)), clock.now)
    core.report(ev.TokenPiece(old_key, 1, "stale"), clock.now)
    assert core.get(job_id).status is S.RUNNING
    core.report(ev.JobReply(run.key, result=JobResult("completed", "done", 1)), clock.now)
    done = core.get(job_id)
    assert done.status is S.SUCCEEDED and done.output == "done" and done.attempts == 1
    assert core.metrics.job_outcomes.labels("succeeded")._value.get() == 1


def test_no_host_is_lost_right_after_the_supervisor_stood_still(tmp_path: Path) -> None:
    core, _, clock = remote_core(tmp_path)
    core.check_hosts(clock.now)
    tick_to(core, clock, clock.mono + LOSS_S + 1)  # the supervisor's own loop stalled: unread beats wait
    core.check_hosts(clock.now)
    assert core.hosts["remote|boot"].lost_at is None
    clock.advance(0.25)
    core.check_hosts(clock.now)  # the next look, beats still silent: now it is the host
    assert core.hosts["remote|boot"].lost_at is not None


def test_the_servers_own_host_is_never_lost(tmp_path: Path) -> None:
    core, _, clock = remote_core(tmp_path, remote_engines=0)
    job_id = start_on(core, clock, 0)
    tick_to(core, clock, clock.mono + 5 * LOSS_S)
    core.check_hosts(clock.now)
    assert core.get(job_id).status is S.RUNNING and core.pool.get(0) is not None


def test_an_agent_that_beats_keeps_its_host(tmp_path: Path) -> None:
    core, _, clock = remote_core(tmp_path)
    for _ in range(5):  # engines busy in long C calls say nothing; their agent still beats
        clock.advance(LOSS_S / 2)
        agent_beat(core, clock, pids=(100, 101))
        core.check_hosts(clock.now)
    assert core.hosts["remote|boot"].lost_at is None and core.pool.get(10) is not None


def test_a_job_past_its_deadline_on_a_lost_host_ends_timed_out_with_its_output(tmp_path: Path) -> None:
    core, driver, clock = remote_core(tmp_path, loss_s=1.5)
    job_id = start_on(core, clock, 10, deadline_s=1.0)
    tick_to(core, clock, clock.mono + 1.0)  # deadline: SIGINT through the nanny, never confirmed
    assert driver.verbs("sigint")[-1][1] == 10
    tick_to(core, clock, clock.mono + 0.6)
    core.check_hosts(clock.now)
    job = core.get(job_id)
    assert job.status is S.TIMED_OUT and job.output == "partial " and "host remote lost" in (job.error or "")


def test_a_job_cut_off_by_a_lost_host_keeps_the_logprobs_and_token_ids_it_streamed(tmp_path: Path) -> None:
    core, driver, clock = remote_core(tmp_path, loss_s=1.5)
    entries = [TokenLogprob(5, "partial ", -0.5, 2), TokenLogprob(7, "more", -0.25, 1)]
    job_id = start_on(core, clock, 10, deadline_s=1.0, first=entries[0])
    run = core.running_job(job_id)
    assert run is not None
    core.report(ev.TokenPiece(run.key, 1, "more", token_id=7, logprob=entries[1]), clock.now)
    tick_to(core, clock, clock.mono + 1.6)  # past the deadline, and the host silent past host_loss_s
    core.check_hosts(clock.now)
    job = core.get(job_id)
    assert job.status is S.TIMED_OUT and job.output == "partial more" and "host remote lost" in (job.error or "")
    assert job.logprobs == tuple(entries) and job.token_ids == (5, 7)


def test_back_from_a_cut_its_old_engines_are_fenced_and_replaced(tmp_path: Path) -> None:
    core, driver, clock = remote_core(tmp_path)
    start_on(core, clock, 10)
    tick_to(core, clock, clock.mono + LOSS_S + 0.5)
    core.check_hosts(clock.now)
    host = core.hosts["remote|boot"]
    assert host.lost_at is not None
    # the link is back: the old engines' beats arrive, then the agent's, which still runs them
    core.report(ev.EngineBeat(10), clock.now)
    assert host.lost_at is None
    agent_beat(core, clock, pids=(100, 101))
    assert driver.verbs("order_host")[-1] == ("order_host", AGENT, ((100, 101), False))
    assert core.pool.get(10) is None  # never taken back: its old job must not go on
    agent_beat(core, clock, pids=(102, 103))  # the agent replaced them
    assert host.fenced == {}
    for eid, pid in ((12, 102), (13, 103)):
        assert join_engine(core, clock, eid, pid).state is E.IDLE
    assert len(core.pool.serving()) == 3 and core.expected_engines() == 3


def test_a_join_agents_standby_waits_beside_its_serving_engines(tmp_path: Path) -> None:
    core, _, clock = make_core(tmp_path, engines=1, host_loss_s=LOSS_S)
    agent_beat(core, clock, pids=(100, 101, 102), engines=2, standby=1)
    states = [join_engine(core, clock, 10 + i, 100 + i).state for i in range(3)]
    assert states == [E.IDLE, E.IDLE, E.STANDBY]
    core.restart_engine(10, clock.now)  # an idle engine recycled: the standby takes its place at once
    assert core.find_engine(12).state is E.IDLE


def test_host_views_list_hosts_with_their_engines(tmp_path: Path) -> None:
    core, _, clock = remote_core(tmp_path)
    views = {v["host"]: v for v in core.host_views(clock.now)}
    assert views["h"]["local"] and views["h"]["engines"] == [0] and not views["h"]["agent"]
    remote = views["remote"]
    assert remote["agent"] and remote["engines"] == [10, 11] and remote["state"] == "up"
    assert remote["engines_wanted"] == 2 and remote["silent_s"] == 0.0


def test_a_lost_host_without_agent_fences_through_the_nanny_or_forgets_what_the_controller_dropped(
        tmp_path: Path) -> None:
    core, driver, clock = make_core(tmp_path, engines=1, host_loss_s=LOSS_S)
    for eid in (10, 11):
        join_engine(core, clock, eid, pid=100 + eid)  # engines someone else started there, no agent
    tick_to(core, clock, clock.mono + LOSS_S + 0.5)
    core.check_hosts(clock.now)
    host = core.hosts["remote|boot"]
    assert sorted(host.fenced) == [10, 11]
    core.report(ev.EngineUnregistered(10), clock.now)  # the controller dropped it: nothing can reach it now
    assert sorted(host.fenced) == [11]
    core.report(ev.EngineBeat(11), clock.now)  # the link is back: killed through its nanny
    assert host.lost_at is None and host.fenced == {} and ("kill", 11, None) in driver.calls
