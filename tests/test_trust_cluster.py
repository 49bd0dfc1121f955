"""What an engine (or a holder of the join file) can do to the server through IPyParallel: a reply is read as plain
data only, the controller keeps no task records, and its client ports listen on loopback only."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
import zmq.asyncio
from ipyparallel import error as ipp_error

from conftest import make_settings
from llmsup.supervisor.cluster.manager import controller_args
from llmsup.supervisor.cluster.plain_replies import REFUSED
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings
from support.waiting import eventually_async

pytestmark = pytest.mark.timeout(90)


def malicious_reply(marker: str) -> dict[str, Any]:
    """Runs on the engine: a reply whose unpickling would create ``marker`` (as an engine's identity answer)."""
    import os

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    return {"host": "evil", "pid": 1, "extra": Payload()}


def plain_reply() -> dict[str, Any]:
    return {"host": "fine", "ids": [1, 2, 3], "blob": b"x" * 100_000, "pair": (1, 2.5), "set": {1}}


def echo_reply(text: str) -> dict[str, Any]:
    return {"output": text}


# shipped by code: tests/ is not on engines' path
malicious_reply.__module__ = plain_reply.__module__ = echo_reply.__module__ = "__main__"


@pytest.mark.settings(engines=1)
async def test_a_malicious_pickle_from_an_engine_does_not_run(sup: Supervisor, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    eid = next(iter(sup.cluster.engine_ids()))
    with pytest.raises(ipp_error.RemoteError) as refused:
        await asyncio.wrap_future(sup.cluster.apply(eid, malicious_reply, str(marker)))
    assert refused.value.ename == REFUSED and "posix.system" in str(refused.value)
    assert not marker.exists()
    plain = await asyncio.wrap_future(sup.cluster.apply(eid, plain_reply))  # plain data still comes through
    assert plain == plain_reply()


@pytest.mark.settings(engines=1)
async def test_the_hub_keeps_no_task_records(sup: Supervisor) -> None:
    eid = next(iter(sup.cluster.engine_ids()))
    assert await asyncio.wrap_future(sup.cluster.apply(eid, plain_reply))  # a task with a result went through
    client = sup.cluster.client
    assert client is not None
    try:
        records = await asyncio.to_thread(client.db_query, {"msg_id": {"$ne": ""}}, ["msg_id", "buffers"])
    except ipp_error.RemoteError as exc:  # NoDB answers every query with an error
        assert exc.ename == "NoData"
        records = []
    assert records == []


@pytest.mark.settings(engines=1)
async def test_a_read_reply_leaves_the_clients_caches(sup: Supervisor) -> None:
    eid = next(iter(sup.cluster.engine_ids()))
    client = sup.cluster.client
    assert client is not None
    marker = "an unbatched job's output " + "q" * 50
    assert await asyncio.wrap_future(sup.cluster.apply(eid, echo_reply, marker)) == {"output": marker}

    def kept() -> list[str]:
        futures = [f.result() for f in client._futures.values() if f.done() and not f.exception()]
        caches = {"results": client.results, "metadata": client.metadata, "futures": futures}
        return [name for name, cache in caches.items() if marker in repr(cache)]

    await eventually_async(lambda: not kept(), timeout=10, what="the reply purged from the client's caches")
    assert not any(marker in repr(m) for m in client.metadata.values())


def test_controller_client_ports_listen_on_loopback_only(tmp_path: Path) -> None:
    args = controller_args(Settings(run_dir=tmp_path, cluster_ip="10.1.2.3"))
    assert "--IPController.engine_ip=10.1.2.3" in args and "--IPController.client_ip=127.0.0.1" in args
    assert "--IPController.db_class=NoDB" in args


def this_machines_address() -> str:
    """An IPv4 address of this machine beyond loopback (what ``--cluster-ip`` names for engines of other hosts)."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    pytest.skip("this machine has no address beyond loopback")


@pytest.mark.real  # a real controller
async def test_the_running_controller_binds_client_ports_on_loopback(run_dir: Path) -> None:
    address = this_machines_address()
    sup = Supervisor(make_settings(run_dir, engines=1, cluster_ip=address))
    try:
        await sup.start()
        await check_listening(sup, address)
    finally:
        await sup.stop()


async def check_listening(sup: Supervisor, address: str) -> None:
    assert sup.cluster.cluster is not None
    info = await sup.cluster.cluster.controller.get_connection_info()
    client_ports = {v for k, v in info["client"].items() if isinstance(v, int) and k != "registration"}
    pid = int(sup.cluster.cluster.controller.pid)
    listening = {c.laddr.port: c.laddr.ip for p in [psutil.Process(pid), *psutil.Process(pid).children(True)]
                 for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert client_ports and client_ports <= set(listening), (client_ports, listening)
    assert {listening[p] for p in client_ports} == {"127.0.0.1"}, json.dumps(info["client"])
    assert listening[info["engine"]["mux"]] == address
    assert len(sup.cluster.engine_ids()) == 1  # and an engine got in through them


def malformed(sup: Supervisor, channel: str) -> float:
    return sup.metrics.malformed.labels(channel)._value.get()


@pytest.mark.settings(engines=1, slots_per_engine=2, sim_token_s=0.02)
async def test_the_join_files_key_cannot_take_an_engines_connection_nor_settle_its_job(sup: Supervisor) -> None:
    from llmsup.engines.messages import Hello, JobDone, JobResult, encode
    from llmsup.engines.stream import secure_client
    from llmsup.supervisor.core.jobs import JobStatus
    from llmsup.supervisor.core.requests import JobRequest

    (engine,) = sup.pool.serving()
    shared = sup.wires.keys.for_clients()  # what every holder of join.json has
    ctx = zmq.asyncio.Context()
    try:
        pretender = ctx.socket(zmq.DEALER)  # claims engine's identity on the control channel
        pretender.setsockopt(zmq.LINGER, 0)
        pretender.setsockopt(zmq.IDENTITY, str(engine.id).encode())
        secure_client(pretender, shared)
        pretender.connect(sup.wires.control.address)
        await pretender.send(encode(Hello(pid=1)))
        await eventually_async(lambda: malformed(sup, "control") >= 1, timeout=10, what="the hello dropped")
        job = sup.submit(JobRequest("a long one", max_tokens=150)).job
        run = await eventually_async(lambda: sup.core.job_side.running(job.id), timeout=10, what="the job running")
        key = run.key
        forger = ctx.socket(zmq.PUSH)  # settles the job with a result of its own on the token stream
        forger.setsockopt(zmq.LINGER, 0)
        secure_client(forger, shared)
        forger.connect(sup.wires.stream.address)
        await forger.send(encode(JobDone(key, JobResult("completed", text="forged", tokens=1))))
        await eventually_async(lambda: malformed(sup, "stream") >= 1, timeout=10, what="the forged result dropped")
        done = await sup.wait(job.id, 30)
        assert done.status is JobStatus.SUCCEEDED and "forged" not in done.output and done.tokens > 1
        assert not await pretender.poll(100)  # no Submit of the job reached the pretender
        pretender.close(linger=0)
        forger.close(linger=0)
    finally:
        ctx.term()


@pytest.mark.settings(engines=1, slots_per_engine=2, sim_token_s=0.02)
async def test_a_second_agents_key_cannot_take_over_an_engines_connection_nor_settle_its_job(sup: Supervisor) -> None:
    """A holder of join.json is admitted as a join agent with a key of its own; with that key it neither takes over
    the engine's control connection (under its routing id, or by a hello) nor settles the engine's job."""
    from llmsup.engines.messages import Hello, HostBeat, HostOrder, JobDone, JobResult, decode_for_engine, encode
    from llmsup.engines.stream import secure_client
    from llmsup.supervisor.core.jobs import JobStatus
    from llmsup.supervisor.core.requests import JobRequest

    (engine,) = sup.pool.serving()
    assert (wires := sup.wires) is not None
    shared = wires.keys.for_clients()  # what every holder of join.json has
    public, secret = (k.decode() for k in zmq.curve_keypair())
    own = {"server_public": shared["server_public"], "client_public": public, "client_secret": secret}
    ctx = zmq.asyncio.Context()
    socks: list[zmq.asyncio.Socket] = []

    def connect(kind: int, keys: dict[str, str], address: str, identity: bytes | None = None) -> zmq.asyncio.Socket:
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        secure_client(sock, keys)
        sock.connect(address)
        socks.append(sock)
        return sock

    try:
        enrol = connect(zmq.DEALER, shared, wires.control.address)
        await enrol.send(encode(HostBeat("evil", "evil|boot", 0, 0, agent_key=public)))
        answer = decode_for_engine(await asyncio.wait_for(enrol.recv(), 10), expect=(HostOrder,))
        assert answer == HostOrder(enrolled=True)  # admitted: a key of its own
        route = wires.control.route(f"engine:{engine.id}")
        assert route is not None
        pretenders = [connect(zmq.DEALER, own, wires.control.address, identity=route),  # the engine's routing id
                      connect(zmq.DEALER, own, wires.control.address)]
        for pretender in pretenders:
            await pretender.send(encode(Hello(pid=1)))
        await eventually_async(lambda: malformed(sup, "control") >= 1, timeout=10, what="the agent key's hello dropped")
        job = sup.submit(JobRequest("a long one", max_tokens=150)).job
        run = await eventually_async(lambda: sup.core.job_side.running(job.id), timeout=10, what="the job running")
        forger = connect(zmq.PUSH, own, wires.stream.address)  # settles the job with a result of its own
        await forger.send(encode(JobDone(run.key, JobResult("completed", text="forged", tokens=1))))
        await eventually_async(lambda: malformed(sup, "stream") >= 1, timeout=10, what="the forged result dropped")
        done = await sup.wait(job.id, 30)
        assert done.status is JobStatus.SUCCEEDED and "forged" not in done.output and done.tokens > 1
        assert not [p for p in pretenders if await p.poll(100)]  # no Submit of the job reached a pretender
        assert wires.control.route(f"engine:{engine.id}") == route  # the engine's connection is its own still
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()
