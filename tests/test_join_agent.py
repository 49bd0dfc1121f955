"""The join agent's own decisions, without a cluster: the join file (0600, refused when incomplete), fencing, the
restart backoff of an engine that keeps dying, and engines replaced when the server starts a new controller."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from llmsup.engines.messages import HostBeat, HostOrder, decode_for_supervisor, encode
from llmsup.supervisor.cli.join import JoinAgent
from llmsup.supervisor.cluster.joinfile import JoinFileError, JoinInfo
from llmsup.supervisor.rundir import RunDirError
from support.waiting import eventually_async

pytestmark = pytest.mark.timeout(30)
KEYS = {"server_public": "s" * 40, "client_public": "c" * 40, "client_secret": "x" * 40}


def join_info(registration: int = 1234) -> JoinInfo:
    return JoinInfo({"registration": registration, "interface": "tcp://10.0.0.1"}, "tcp://10.0.0.1:1",
                    "tcp://10.0.0.1:2", KEYS, 500, 5.0)


def sleeper() -> subprocess.Popen[bytes]:
    """A stand-in engine process (in a session of its own, as the agent starts engines)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[JoinAgent]:
    path = tmp_path / "join.json"
    join_info().write(path)
    agent = JoinAgent(JoinInfo.read(path), engines=2, standby=1, work_dir=tmp_path / "work", join_file=path)
    yield agent
    for slot in agent.slots:
        if slot.proc is not None and slot.proc.poll() is None:
            slot.proc.kill()
            slot.proc.wait()


def test_join_file_is_the_owners_only_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "join.json"
    join_info().write(path)
    assert path.stat().st_mode & 0o777 == 0o600 and JoinInfo.read(path) == join_info()
    path.write_text('{"version": 1, "controller": {}}')
    with pytest.raises(JoinFileError, match="missing"):
        JoinInfo.read(path)
    path.write_text("not json")
    with pytest.raises(JoinFileError, match="cannot read"):
        JoinInfo.read(path)


def test_fence_kills_the_named_engines_only(agent: JoinAgent) -> None:
    agent.slots[0].proc, agent.slots[1].proc = sleeper(), sleeper()
    keep, victim = agent.slots[0].proc, agent.slots[1].proc
    assert agent.beat().pids == (keep.pid, victim.pid) and agent.beat().engines == 2 and agent.beat().standby == 1
    agent.on_order(encode(HostOrder(fence=(victim.pid,))))
    assert victim.poll() is not None and agent.slots[1].proc is None and keep.poll() is None
    agent.on_order(b"garbage")  # dropped, logged
    agent.on_order(encode(HostOrder(stop=True)))
    assert agent.stopping


def test_an_engine_that_keeps_dying_at_start_is_started_again_after_a_growing_backoff(agent: JoinAgent) -> None:
    agent.stopping = True  # decide only: start nothing
    slot = agent.slots[0]
    delays = []
    for _ in range(3):
        slot.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(255)"])
        slot.proc.wait()
        slot.started_at = 100.0
        agent.keep_alive(101.0)
        delays.append(slot.restart_at - 101.0)
    assert delays == [1.0, 2.0, 4.0] and slot.proc is None


def test_a_new_controller_in_the_join_file_replaces_the_engines(agent: JoinAgent, tmp_path: Path) -> None:
    agent.slots[0].proc = sleeper()
    old = agent.slots[0].proc
    agent.refresh()
    assert old.poll() is None  # unchanged file: nothing happens
    join_info(registration=4321).write(tmp_path / "join.json")
    agent._join_mtime = 0.0  # as if written later than it was read (mtime granularity)
    agent.refresh()
    assert old.poll() is not None and agent.slots[0].proc is None
    assert agent.info.controller["registration"] == 4321


@pytest.mark.parametrize("make", ["foreign", "group-writable"])
def test_a_work_dir_not_its_own_and_private_is_refused(tmp_path: Path, make: str) -> None:
    path = tmp_path / "join.json"
    join_info().write(path)
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    if make == "foreign":  # another local user made it first (root here: hand it to nobody)
        os.chown(work, 65534, 65534)
    else:
        os.chmod(work, 0o770)
    agent = JoinAgent(JoinInfo.read(path), engines=1, standby=0, work_dir=work, join_file=path)
    with pytest.raises(RunDirError, match="join work dir"):
        asyncio.run(agent.run())
    assert not agent.slots or all(slot.proc is None for slot in agent.slots)  # no engine started
    assert list(work.iterdir()) == []


class Channel:
    """A control channel as the server binds it: a CURVE ROUTER on a port of its own, with its own keys."""

    def __init__(self, ctx: zmq.asyncio.Context) -> None:
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        self.keys = {"server_public": server_public.decode(), "client_public": client_public.decode(),
                     "client_secret": client_secret.decode()}
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.curve_server = True
        self.sock.curve_secretkey = server_secret
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"

    async def beat_from(self) -> HostBeat:
        _, raw = await asyncio.wait_for(self.sock.recv_multipart(), 10)
        return decode_for_supervisor(raw, expect=(HostBeat,))


async def test_a_new_control_channel_in_the_join_file_gets_a_new_socket(tmp_path: Path) -> None:
    ctx = zmq.asyncio.Context()
    old, new = Channel(ctx), Channel(ctx)
    path = tmp_path / "join.json"
    controller = {"registration": 1, "interface": "tcp://127.0.0.1"}
    JoinInfo(controller, "tcp://127.0.0.1:1", old.address, old.keys, 500, 5.0).write(path)
    agent = JoinAgent(JoinInfo.read(path), engines=0, work_dir=tmp_path / "work", join_file=path, beat_s=0.05)
    running = asyncio.ensure_future(agent.run())
    try:
        assert (await old.beat_from()).agent_key == agent.public_key
        JoinInfo(controller, "tcp://127.0.0.1:1", new.address, new.keys, 500, 5.0).write(path)
        agent._join_mtime = 0.0  # as if written later than it was read (mtime granularity)
        assert (await new.beat_from()).agent_key == agent.public_key  # the new address, with the new keys
        assert agent.info.control_address == new.address
    finally:
        agent.stopping = True
        await asyncio.wait_for(running, 10)
        for channel in (old, new):
            channel.sock.close(linger=0)
        ctx.term()


async def test_beats_while_the_server_is_unreachable_leave_no_unretrieved_error(tmp_path: Path) -> None:
    import gc

    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    ctx = zmq.asyncio.Context()
    channel = Channel(ctx)  # its keys; nothing listens at the address the agent is given
    channel.sock.close(linger=0)
    path = tmp_path / "join.json"
    JoinInfo({"registration": 1}, "tcp://127.0.0.1:1", channel.address, channel.keys, 500, 5.0).write(path)
    agent = JoinAgent(JoinInfo.read(path), engines=0, work_dir=tmp_path / "work", join_file=path, beat_s=0.02)
    beats = []
    beat = agent.beat
    agent.beat = lambda: beats.append(1) or beat()  # type: ignore[method-assign]
    running = asyncio.ensure_future(agent.run())
    try:  # each beat refused by the socket (no peer: zmq.Again), as while the network is down
        await eventually_async(lambda: len(beats) >= 10, timeout=10, what="ten beats")
    finally:
        agent.stopping = True
        await asyncio.wait_for(running, 10)
        ctx.term()
    gc.collect()
    await asyncio.sleep(0)  # the loop reports what the collection found
    assert not [c for c in unhandled if "never retrieved" in str(c.get("message"))]


def test_an_agent_of_one_pool_tells_its_engines_which(agent: JoinAgent, tmp_path: Path) -> None:
    assert "LLMSUP_POOL" not in agent._env(agent.slots[0])  # no --pool: the server's first pool
    pooled = JoinAgent(agent.info, engines=1, work_dir=tmp_path / "work2", pool="big")
    assert pooled._env(pooled.slots[0])["LLMSUP_POOL"] == "big"


async def test_the_agent_is_admitted_and_then_beats_under_its_own_key(tmp_path: Path) -> None:
    from llmsup.supervisor.cluster.control import ControlChannel
    from llmsup.supervisor.cluster.curve import ChannelGate, ChannelKeys
    from llmsup.supervisor.metrics.prometheus import Metrics

    ctx = zmq.asyncio.Context()
    keys = ChannelKeys.generate()
    gate = ChannelGate(ctx, keys)
    channel = ControlChannel(ctx, "tcp://127.0.0.1", Metrics(), keys, gate=gate)
    beats: list[tuple[str, HostBeat]] = []
    asked: list[str] = []

    def enrol(beat: HostBeat) -> HostOrder | None:
        asked.append(beat.agent_key)
        return HostOrder(enrolled=True) if gate.admit_agent(beat.agent_key) else None

    reading = asyncio.ensure_future(channel.receive(lambda eid, hello: None, lambda a, b: beats.append((a, b)), enrol))
    path = tmp_path / "join.json"
    JoinInfo({"registration": 1}, "tcp://127.0.0.1:1", channel.address, keys.for_clients(), 500, 5.0).write(path)
    agent = JoinAgent(JoinInfo.read(path), engines=0, work_dir=tmp_path / "work", join_file=path, beat_s=0.05)
    running = asyncio.ensure_future(agent.run())
    try:
        await eventually_async(lambda: len(beats) >= 3, timeout=10, what="beats under the agent's own key")
        assert agent.enrolled and {a for a, _ in beats} == {"agent:1"} and asked[0] == agent.public_key
        assert channel.order("agent:1", HostOrder(stop=True))  # reaches the agent on its own connection
        await asyncio.wait_for(running, 10)
    finally:
        agent.stopping = True
        await asyncio.wait_for(running, 10)
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        channel.close()
        gate.close()
        ctx.term()
