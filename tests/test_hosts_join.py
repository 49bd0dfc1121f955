"""``llmsup join`` on a namespace host, and a peer without keys on another one.

The join file is the owner's only (0600); the agent's engines register (one kept as a standby, as asked) and serve;
a peer without the keys that connects to every port the server listens on and sends garbage gets no job data, and
the server goes on serving; when the server stops, it tells the agent, whose engines stop and which exits.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from hostfixtures import host_settings, serving_on, start_agent, until
from llmsup.supervisor.core.engine_state import EngineState
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from nethosts import HostNet, hostnet  # noqa: F401 (fixture)

pytestmark = [pytest.mark.real, pytest.mark.timeout(180)]
SECRET = "zebra-quartz-1729"  # in a job's prompt and output: a peer must never see it
PEER = Path(__file__).with_name("garbage_peer.py")


def listening_ports(sup: Supervisor, address: str) -> list[int]:
    """TCP ports on ``address`` that the supervisor process and its controller (with its children) listen on."""
    controller = psutil.Process(sup.cluster.cluster.controller.pid)  # type: ignore[union-attr]
    procs = [psutil.Process(), controller, *controller.children(recursive=True)]
    ports = set()
    for proc in procs:
        for conn in proc.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.ip in (address, "0.0.0.0"):
                ports.add(conn.laddr.port)
    return sorted(ports)


async def test_join_agent_serves_and_a_peer_without_keys_gets_nothing(hostnet: HostNet,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    hosta, stranger = hostnet.add_host("hosta"), hostnet.add_host("stranger")
    sup = Supervisor(host_settings(hostnet, tmp_path / "run", engines=1))
    agent = None
    try:
        await sup.start()
        join = sup.settings.run_dir / "join.json"
        assert join.stat().st_mode & 0o777 == 0o600
        keys = json.loads(join.read_text())["curve"]
        agent = start_agent(hostnet, hosta, sup, engines=1, standby=1)
        await until(lambda: len(serving_on(sup, "hosta")) == 1 and
                    any(e.state is EngineState.STANDBY for e in sup.pool if e.host == "hosta"), 60,
                    "hosta: one engine serving, one standby")
        assert sup.expected_engines() == 2
        for engine in sup.pool:
            if engine.host != "hosta":
                sup.drain_engine(engine.id)  # the secret job runs on hosta: its text crosses the network
        secret = sup.submit(JobRequest(f"{SECRET} {SECRET}", max_tokens=2)).job
        done = await sup.wait(secret.id, 30)
        assert done.status is JobStatus.SUCCEEDED and SECRET in done.output and done.engine.host == "hosta"

        ports = listening_ports(sup, hostnet.server_address)
        assert (wires := sup.wires) is not None
        own = [int(addr.rsplit(":", 1)[1]) for addr in (sup.stream_address, wires.control.address)]
        assert set(own) <= set(ports) and len(ports) >= 8  # llmsup's two channels and the controller's
        targets = [f"{hostnet.server_address}:{p}" for p in ports]
        spec = {"targets": targets, "marker": SECRET, "server_public": keys["server_public"],
                "curve_targets": [f"{hostnet.server_address}:{p}" for p in own], "seconds": 3}
        peer = hostnet.spawn(stranger, [sys.executable, str(PEER), json.dumps(spec)], log_name="peer")
        while peer.popen.poll() is None:  # meanwhile the server serves: a job on hosta carries the secret again
            again = await sup.wait(sup.submit(JobRequest(f"{SECRET} again", max_tokens=3)).job.id, 30)
            assert again.status is JobStatus.SUCCEEDED
        report = json.loads(peer.output().strip().splitlines()[-1])
        assert report["connected_raw"] == len(targets) and not report["leaked"], report
        assert wires.gate.refused > 0  # the peer with a key pair of its own was refused by the channels' ZAP check
        assert sup.metrics.malformed.labels("stream")._value.get() == 0  # nothing got past the handshake
        assert sup.metrics.malformed.labels("control")._value.get() == 0
        for engine in sup.pool:
            sup.drain_engine(engine.id, drain=False)
        after = [sup.submit(JobRequest(f"after {i}", max_tokens=3)).job for i in range(6)]
        assert [(await sup.wait(j.id, 30)).status for j in after] == [JobStatus.SUCCEEDED] * len(after)
    finally:
        await sup.stop()
        if agent is not None:  # the server told it to stop: it exits by itself
            status = await asyncio.get_running_loop().run_in_executor(None, wait_exit, agent.popen, 30)
            assert status == 0, agent.output()[-3000:]


def wait_exit(popen: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return popen.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


async def test_an_agent_runs_engines_of_the_pool_it_names(hostnet: HostNet, tmp_path: Path) -> None:  # noqa: F811
    """``llmsup join --pool big`` on hosta: its engine serves pool big (whose engines this server does not start),
    and jobs of that pool run there only."""
    hosta = hostnet.add_host("hosta")
    pools = [{"name": "small", "engines": 1}, {"name": "big", "engines": 0, "served_model_name": "m-big"}]
    sup = Supervisor(host_settings(hostnet, tmp_path / "run", engines=1, pools=pools))
    agent = None
    try:
        await sup.start()
        agent = start_agent(hostnet, hosta, sup, engines=1, pool="big")
        await until(lambda: len(serving_on(sup, "hosta")) == 1, 60, "hosta: one engine serving")
        serving = [(e.host == "hosta", e.pool) for e in sup.pool if e.state in (EngineState.IDLE, EngineState.BUSY)]
        assert sorted(serving) == [(False, "small"), (True, "big")]  # ours on this host, the agent's on hosta
        jobs = [sup.submit(JobRequest(f"big {i}", max_tokens=2, pool="m-big")).job for i in range(3)]
        jobs.append(sup.submit(JobRequest("small one", max_tokens=2)).job)
        done = [await sup.wait(j.id, 30) for j in jobs]
        assert [d.status for d in done] == [JobStatus.SUCCEEDED] * 4
        assert [d.engine.host for d in done[:3]] == ["hosta"] * 3 and done[3].engine.host != "hosta"
        assert [d.pool for d in done] == ["big", "big", "big", "small"]
    finally:
        await sup.stop()
        if agent is not None:
            status = await asyncio.get_running_loop().run_in_executor(None, wait_exit, agent.popen, 30)
            assert status == 0, agent.output()[-3000:]
