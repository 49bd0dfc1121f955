"""Each peer of llmsup's channels is named by its own CURVE key (real zmq sockets, the real ZAP handler): an engine's
key speaks for that engine only, the join file's key for no engine; the rest is dropped and counted."""

from __future__ import annotations

import asyncio

import pytest
import zmq
import zmq.asyncio

from llmsup.engines.messages import (
    EngineBeat,
    Hello,
    HostBeat,
    HostOrder,
    StreamEvent,
    TokenPiece,
    decode_for_engine,
    encode,
)
from llmsup.engines.stream import secure_client
from llmsup.supervisor.cluster.control import ControlChannel
from llmsup.supervisor.cluster.curve import ChannelGate, ChannelKeys, engine_of
from llmsup.supervisor.cluster.stream_reader import StreamReader
from llmsup.supervisor.metrics.prometheus import Metrics
from support.waiting import eventually_async

pytestmark = pytest.mark.timeout(30)
BIND = "tcp://127.0.0.1"


def beats_of_its_own(event: StreamEvent, sender: str) -> bool:
    return isinstance(event, EngineBeat) and event.engine_id == engine_of(sender)


async def test_the_stream_names_each_sender_by_its_key() -> None:
    ctx = zmq.asyncio.Context()
    keys = ChannelKeys.generate()
    gate = ChannelGate(ctx, keys)
    metrics = Metrics()
    got: asyncio.Queue[StreamEvent] = asyncio.Queue()
    reader = StreamReader(ctx, BIND, got.put_nowait, metrics, keys, check=beats_of_its_own)
    task = asyncio.ensure_future(reader.run())
    pushers = []

    async def send(peer_keys: dict[str, str], event: object) -> None:
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        secure_client(sock, peer_keys)
        sock.connect(reader.address)
        pushers.append(sock)
        await sock.send(encode(event))

    try:
        seven = gate.engine_keys(7)
        await send(seven, EngineBeat(8))  # engine 7's key, beating as engine 8
        await send(keys.for_clients(), EngineBeat(7))  # the join file's key, as engine 7
        await send(seven, TokenPiece("job-1#1", 0, "x"))  # not a beat: refused by this check
        await send(seven, EngineBeat(7))
        assert (await asyncio.wait_for(got.get(), 10)) == EngineBeat(7)
        dropped = metrics.malformed.labels("stream")._value
        await eventually_async(lambda: dropped.get() == 3, timeout=10, what="the three others dropped")
        assert got.empty()
        gate.revoke_engine(7)
        await send(seven, EngineBeat(7))  # a new connection with a revoked key: the handshake fails
        await eventually_async(lambda: gate.refused >= 1, timeout=10, what="the revoked key refused")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for sock in pushers:
            sock.close(linger=0)
        reader.close()
        gate.close()
        ctx.term()


async def dealer(ctx: zmq.asyncio.Context, address: str, peer_keys: dict[str, str],
                 identity: bytes | None = None) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    secure_client(sock, peer_keys)
    sock.connect(address)
    return sock


async def test_a_control_connection_is_found_by_its_engines_key_only() -> None:
    ctx = zmq.asyncio.Context()
    keys = ChannelKeys.generate()
    gate = ChannelGate(ctx, keys)
    metrics = Metrics()
    channel = ControlChannel(ctx, BIND, metrics, keys, gate=gate)
    hellos: asyncio.Queue[int] = asyncio.Queue()
    task = asyncio.ensure_future(channel.receive(lambda eid, hello: hellos.put_nowait(eid)))
    dealers: list[zmq.asyncio.Socket] = []
    dropped = metrics.malformed.labels("control")._value

    async def connect(peer_keys: dict[str, str], identity: bytes | None = None) -> zmq.asyncio.Socket:
        dealers.append(await dealer(ctx, channel.address, peer_keys, identity))
        return dealers[-1]

    try:
        three_keys = gate.engine_keys(3)
        engine = await connect(three_keys)
        await engine.send(encode(Hello(pid=1)))
        assert await asyncio.wait_for(hellos.get(), 10) == 3
        route = channel.route("engine:3")
        assert route is not None
        public, secret = (k.decode() for k in zmq.curve_keypair())
        assert gate.admit_agent(public) == "agent:1"
        agent_keys = {"server_public": keys.server_public, "client_public": public, "client_secret": secret}
        # the join file's key and an agent's claiming engine 3 (its old-style identity, or none); engine 4's key
        # and the join file's under engine 3's connection's routing id: none of them is taken for engine 3
        for pretender_keys, identity in ((keys.for_clients(), b"3"), (agent_keys, None), (gate.engine_keys(4), route),
                                         (keys.for_clients(), route)):
            pretender = await connect(pretender_keys, identity)
            await pretender.send(encode(Hello(pid=2)))
        await eventually_async(lambda: dropped.get() == 2, timeout=10, what="two hellos dropped")
        assert hellos.empty()  # under engine 3's routing id: ignored (no handover), nothing taken over
        assert channel.send(3, Hello(pid=0))  # still reaches engine 3's own connection
        assert await asyncio.wait_for(engine.recv(), 10) == encode(Hello(pid=0))
        assert not any([await d.poll(50) for d in dealers[1:]])

        again = await connect(three_keys)  # engine 3 reconnects: found on its new connection by its key
        await again.send(encode(Hello(pid=1)))
        await eventually_async(lambda: channel.route("engine:3") != route, timeout=10, what="the new route")
        assert hellos.empty()  # a hello again is not a new engine
        assert channel.send(3, Hello(pid=7))
        assert await asyncio.wait_for(again.recv(), 10) == encode(Hello(pid=7))

        gate.revoke_engine(3)  # its old connections are not heard; a new one fails the handshake
        before = dropped.get()
        await again.send(encode(Hello(pid=1)))
        await eventually_async(lambda: dropped.get() == before + 1, timeout=10, what="the revoked key's hello dropped")
        await (await connect(three_keys)).send(encode(Hello(pid=1)))
        await eventually_async(lambda: gate.refused >= 1, timeout=10, what="the revoked key refused")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for sock in dealers:
            sock.close(linger=0)
        channel.close()
        gate.close()
        ctx.term()


async def test_an_agent_is_admitted_under_its_own_key_and_beats_only_under_it() -> None:
    ctx = zmq.asyncio.Context()
    keys = ChannelKeys.generate()
    gate = ChannelGate(ctx, keys)
    metrics = Metrics()
    channel = ControlChannel(ctx, BIND, metrics, keys, gate=gate)
    beats: asyncio.Queue[tuple[str, HostBeat]] = asyncio.Queue()

    def enrol(beat: HostBeat) -> HostOrder | None:
        return HostOrder(enrolled=True) if gate.admit_agent(beat.agent_key) else None

    task = asyncio.ensure_future(channel.receive(lambda eid, hello: None, lambda a, b: beats.put_nowait((a, b)),
                                                 enrol))
    dealers: list[zmq.asyncio.Socket] = []
    dropped = metrics.malformed.labels("control")._value
    public, secret = (k.decode() for k in zmq.curve_keypair())
    own = {"server_public": keys.server_public, "client_public": public, "client_secret": secret}
    beat = HostBeat("hosta", "hosta-boot", 0, 1, agent_key=public)
    try:
        shared = await dealer(ctx, channel.address, keys.for_clients())
        dealers.append(shared)
        await shared.send(encode(HostBeat("hosta", "hosta-boot", 0, 1)))  # no key of its own: nothing to admit
        await shared.send(encode(beat))
        assert decode_for_engine(await asyncio.wait_for(shared.recv(), 10), expect=(HostOrder,)) == HostOrder(enrolled=True)
        assert beats.empty() and dropped.get() == 1  # under the join file's key a beat is a request, not a beat
        mine = await dealer(ctx, channel.address, own)
        dealers.append(mine)
        await mine.send(encode(beat))
        assert await asyncio.wait_for(beats.get(), 10) == ("agent:1", beat)
        assert channel.order("agent:1", HostOrder(fence=(5,)))
        assert decode_for_engine(await asyncio.wait_for(mine.recv(), 10), expect=(HostOrder,)) == HostOrder(fence=(5,))
        await mine.send(encode(Hello(pid=1)))  # an agent's key speaks for no engine
        await eventually_async(lambda: dropped.get() == 2, timeout=10, what="the agent's hello dropped")
        gate.revoke("agent:1")
        await mine.send(encode(beat))
        await eventually_async(lambda: dropped.get() == 3, timeout=10, what="the revoked agent's beat dropped")
        assert gate.admit_agent(public) is None  # a revoked key is not admitted again
        dealers.append(await dealer(ctx, channel.address, own))
        await dealers[-1].send(encode(beat))
        await eventually_async(lambda: gate.refused >= 1, timeout=10, what="the revoked key refused")
        assert beats.empty()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for sock in dealers:
            sock.close(linger=0)
        channel.close()
        gate.close()
        ctx.term()


async def test_an_engine_of_an_old_controller_does_not_speak_for_the_new_engine_of_its_id() -> None:
    ctx = zmq.asyncio.Context()
    keys = ChannelKeys.generate()
    gate = ChannelGate(ctx, keys)
    metrics = Metrics()
    channel = ControlChannel(ctx, BIND, metrics, keys, gate=gate)
    hellos: asyncio.Queue[int] = asyncio.Queue()
    task = asyncio.ensure_future(channel.receive(lambda eid, hello: hellos.put_nowait(eid)))
    dealers: list[zmq.asyncio.Socket] = []
    try:
        old = await dealer(ctx, channel.address, gate.engine_keys(3))
        dealers.append(old)
        await old.send(encode(Hello(pid=1)))
        assert await asyncio.wait_for(hellos.get(), 10) == 3
        gate.revoke_engines()  # a new controller: its engine 3 is another engine
        channel.forget(3)
        new = await dealer(ctx, channel.address, gate.engine_keys(3))
        dealers.append(new)
        await old.send(encode(Hello(pid=1)))  # the old engine 3, on the connection it made before
        await eventually_async(lambda: metrics.malformed.labels("control")._value.get() == 1, timeout=10,
                               what="the old engine's hello dropped")
        await new.send(encode(Hello(pid=2)))
        assert await asyncio.wait_for(hellos.get(), 10) == 3
        assert channel.send(3, Hello(pid=0))
        assert await asyncio.wait_for(new.recv(), 10) == encode(Hello(pid=0)) and not await old.poll(100)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for sock in dealers:
            sock.close(linger=0)
        channel.close()
        gate.close()
        ctx.term()
