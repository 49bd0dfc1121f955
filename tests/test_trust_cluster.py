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
from ipyparallel import error as ipp_error

from conftest import make_settings
from llmsup.supervisor.cluster.manager import controller_args
from llmsup.supervisor.cluster.plain_replies import REFUSED
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings

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


malicious_reply.__module__ = plain_reply.__module__ = "__main__"  # shipped by code: tests/ is not on engines' path


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
