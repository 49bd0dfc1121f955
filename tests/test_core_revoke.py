"""Revoking a host and binding join agents to their hosts, in the supervisor core on a fake cluster with a fake
clock: a revoked host's engines leave and their jobs run again elsewhere, not charged an attempt; nothing of that
host is taken again; an agent's key speaks for the one host it first beat for, and not for a host whose own agent
still beats."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmsup.engines.messages import JobResult
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import HostNotFound, HostNotRevocable
from test_core_hosts import AGENT, LOSS_S, agent_beat, join_engine, remote_core, start_on
from test_core_ladder import tick_to

pytestmark = pytest.mark.timeout(10)


def refused(core: object, reason: str) -> float:
    return core.metrics.refused_peers.labels(reason)._value.get()  # type: ignore[attr-defined]


def test_a_revoked_hosts_engines_leave_and_its_job_runs_again_uncharged(tmp_path: Path) -> None:
    core, driver, clock = remote_core(tmp_path)
    job_id = start_on(core, clock, 10)
    old_key = core.running_job(job_id).key  # type: ignore[union-attr]
    answer = core.revoke_host("remote", clock.now)
    assert answer == {"host": "remote", "host_key": "remote|boot", "engines": [10, 11], "jobs": [job_id]}
    assert driver.verbs("revoke_host") == [("revoke_host", "remote|boot", (AGENT, (10, 11)))]
    assert core.pool.get(10) is None and core.pool.get(11) is None
    job = core.get(job_id)
    assert job.status is JobStatus.QUEUED and job.attempts == 0 and "host remote revoked" in (job.error or "")
    view = next(v for v in core.host_views(clock.now) if v["host"] == "remote")
    assert view["state"] == "revoked" and view["fenced"] == [] and not view["agent"]

    clock.advance(1.0)  # the job runs on the server's own engine; the revoked host's late answer is dropped
    assert core.dispatch_ready(clock.now) == 1
    run = core.running_job(job_id)
    assert run is not None and run.engine.id == 0
    core.report(ev.JobReply(old_key, result=JobResult("completed", "late from the revoked host", 3)), clock.now)
    core.report(ev.JobReply(run.key, result=JobResult("completed", "done", 1)), clock.now)
    assert core.get(job_id).output == "done" and core.get(job_id).attempts == 1

    agent_beat(core, clock, pids=(100, 101))  # its agent's beats, and its engines' registrations, are not taken
    ident = ev.EngineIdentity(host="remote", host_key="remote|boot", pid=102, gpu="")
    core.report(ev.EngineIdentified(12, ident), clock.now)
    assert core.pool.get(12) is None and refused(core, "revoked") == 1
    tick_to(core, clock, clock.mono + 5 * LOSS_S)
    core.check_hosts(clock.now)
    assert core.hosts["remote|boot"].losses == 0 and core.expected_engines() == 1


def test_revoking_the_servers_own_host_or_an_unknown_one_is_refused(tmp_path: Path) -> None:
    core, driver, clock = remote_core(tmp_path)
    own = next(v for v in core.host_views(clock.now) if v["local"])
    with pytest.raises(HostNotRevocable):
        core.revoke_host(own["host_key"], clock.now)
    with pytest.raises(HostNotFound, match="no host 'elsewhere'"):
        core.revoke_host("elsewhere", clock.now)
    assert driver.verbs("revoke_host") == [] and core.pool.get(0) is not None


def test_an_agents_key_speaks_for_its_own_host_only(tmp_path: Path) -> None:
    core, _, clock = remote_core(tmp_path)
    other = ev.HostHeard("agent:2", "remote", "remote|boot", 0, 5, 0, ())  # another agent claims "remote"
    core.report(other, clock.now)
    host = core.hosts["remote|boot"]
    assert host.agent == AGENT and host.engines_wanted == 2 and refused(core, "claim") == 1
    core.report(ev.HostHeard(AGENT, "elsewhere", "elsewhere|boot", 0, 1, 0, ()), clock.now)  # a second host
    assert "elsewhere|boot" not in core.hosts and refused(core, "claim") == 2
    clock.advance(LOSS_S + 0.1)  # remote's own agent fell silent (restarted): a new one takes the host over
    core.report(other, clock.now)
    assert host.agent == "agent:2" and host.engines_wanted == 5
    join_engine(core, clock, 12, pid=102)  # engines register as before
