"""Revoking a namespace host: its engines leave while running jobs (which run again on the server's own engine, not
charged an attempt), its join agent is told to stop and exits, the keys its engines were given are refused from then
on, and a new agent started there with the join file is refused too (told to stop; its engines are not taken)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from hostfixtures import host_settings, serving_on, start_agent, until
from llmsup.engines.messages import EngineBeat, encode
from llmsup.engines.stream import secure_client
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from nethosts import HostNet, hostnet  # noqa: F401 (fixture)
from test_hosts_join import wait_exit

pytestmark = [pytest.mark.real, pytest.mark.timeout(180)]


async def test_a_revoked_host_leaves_and_its_old_keys_are_refused(hostnet: HostNet, tmp_path: Path) -> None:  # noqa: F811
    hosta = hostnet.add_host("hosta")
    sup = Supervisor(host_settings(hostnet, tmp_path / "run", engines=1))
    ctx = zmq.asyncio.Context()
    pushers: list[zmq.asyncio.Socket] = []
    try:
        await sup.start()
        assert (wires := sup.wires) is not None
        handed: dict[int, dict[str, str]] = {}  # the keys each engine was given (read, not changed)
        engine_keys = wires.gate.engine_keys
        wires.gate.engine_keys = lambda eid: handed.setdefault(eid, engine_keys(eid))  # type: ignore[method-assign]
        agent = start_agent(hostnet, hosta, sup, engines=2)
        await until(lambda: len(serving_on(sup, "hosta")) == 2, 60, "hosta: two engines serving")
        on_a = set(serving_on(sup, "hosta"))
        (own,) = [e.id for e in sup.pool.serving() if e.host != "hosta"]
        sup.drain_engine(own)  # the jobs start on hosta
        jobs = [sup.submit(JobRequest(f"slow {i} [sim:slow=0.05]", max_tokens=200)).job for i in range(2)]
        await until(lambda: all(sup.get(j.id).status is JobStatus.RUNNING for j in jobs), 30, "both jobs running")
        assert {sup.get(j.id).engine.id for j in jobs} <= on_a  # type: ignore[union-attr]

        answer = sup.revoke_host("hosta")
        assert answer["host"] == "hosta" and set(answer["engines"]) == on_a
        assert sorted(answer["jobs"]) == sorted(j.id for j in jobs)
        assert not on_a & set(sup.pool.engines)  # its engines left at once
        sup.drain_engine(own, drain=False)
        done = [await sup.wait(j.id, 60) for j in jobs]
        assert [(d.status, d.engine.id, d.attempts) for d in done] == [(JobStatus.SUCCEEDED, own, 1)] * 2  # type: ignore[union-attr]
        status = await asyncio.get_running_loop().run_in_executor(None, wait_exit, agent.popen, 30)
        assert status == 0, agent.output()[-3000:]  # told to stop: its engines stopped, it ended

        refused, dropped = wires.gate.refused, sup.metrics.malformed.labels("stream")._value.get()
        for eid in on_a:  # an engine's old key: the handshake fails, nothing reaches the stream
            pusher = ctx.socket(zmq.PUSH)
            pushers.append(pusher)
            pusher.setsockopt(zmq.LINGER, 0)
            secure_client(pusher, handed[eid])
            pusher.connect(wires.stream.address)
            await pusher.send(encode(EngineBeat(eid)))
        await until(lambda: wires.gate.refused >= refused + len(on_a), 10, "the old engine keys refused")
        assert sup.metrics.malformed.labels("stream")._value.get() == dropped  # none got past the handshake

        again = start_agent(hostnet, hosta, sup, engines=1)  # the join file still admits a new agent, not there
        status = await asyncio.get_running_loop().run_in_executor(None, wait_exit, again.popen, 60)
        assert status == 0, again.output()[-3000:]
        assert sup.metrics.refused_peers.labels("revoked")._value.get() >= 1
        assert not serving_on(sup, "hosta") and not [e for e in sup.pool if e.host == "hosta"]
        view = next(h for h in sup.host_views() if h["host"] == "hosta")
        assert view["state"] == "revoked" and view["engines"] == []
        after = await sup.wait(sup.submit(JobRequest("after", max_tokens=3)).job.id, 30)
        assert after.status is JobStatus.SUCCEEDED and after.engine.id == own  # type: ignore[union-attr]
    finally:
        await sup.stop()
        for pusher in pushers:
            pusher.close(linger=0)
        ctx.term()
