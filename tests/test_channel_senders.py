"""Each peer of llmsup's channels is named by its own CURVE key (real zmq sockets, the real ZAP handler): an engine's
key speaks for that engine only, the join file's key for no engine; the rest is dropped and counted."""

from __future__ import annotations

import asyncio

import pytest
import zmq
import zmq.asyncio

from llmsup.engines.messages import EngineBeat, Hello, StreamEvent, TokenPiece, encode
from llmsup.engines.stream import secure_client
from llmsup.supervisor.cluster.control import ControlChannel, read_hello
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
        gate.revoke("engine:7")
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


async def test_a_control_connection_is_claimed_by_its_engines_key_only() -> None:
    ctx = zmq.asyncio.Context()
    keys = ChannelKeys.generate()
    gate = ChannelGate(ctx, keys)
    metrics = Metrics()
    channel = ControlChannel(ctx, BIND, metrics, keys)
    hellos: asyncio.Queue[int] = asyncio.Queue()
    task = asyncio.ensure_future(channel.receive(lambda eid, hello: hellos.put_nowait(eid)))
    dealers = []

    async def hello(peer_keys: dict[str, str], identity: str) -> zmq.asyncio.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, identity.encode())
        secure_client(sock, peer_keys)
        sock.connect(channel.address)
        dealers.append(sock)
        await sock.send(encode(Hello(pid=1)))
        return sock

    try:
        route = channel.route_for(3)
        assert read_hello([route.encode(), encode(Hello(pid=1))])[0] == 3 and len(route) > 20
        await hello(keys.for_clients(), "3")  # the join file's key under engine 3's id
        await hello(gate.engine_keys(4), route)  # engine 4's key under engine 3's route
        dropped = metrics.malformed.labels("control")._value
        await eventually_async(lambda: dropped.get() == 2, timeout=10, what="both hellos dropped")
        engine = await hello(gate.engine_keys(3), route)
        assert await asyncio.wait_for(hellos.get(), 10) == 3 and hellos.empty()
        assert channel.send(3, Hello(pid=0))  # reaches the engine's own connection
        assert await asyncio.wait_for(engine.recv(), 10) == encode(Hello(pid=0))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for sock in dealers:
            sock.close(linger=0)
        channel.close()
        gate.close()
        ctx.term()
