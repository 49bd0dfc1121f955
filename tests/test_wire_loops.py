"""Garbage of every shape into real zmq socket pairs: the loops that read engines' messages keep running.

- the supervisor's token stream (PULL, supervisor/cluster/stream_reader.py),
- the supervisor's control channel (ROUTER, supervisor/cluster/control.py),
- a batched engine's serving loop (DEALER, engines/batch.py).

Each unreadable message is counted (``llmsup_malformed_messages_total{channel}`` on the supervisor) and logged
once per peer and kind of problem, and the next good message still gets through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import pytest
import zmq
import zmq.asyncio

from llmsup.engines import runtime
from llmsup.engines.batch import BatchServer
from llmsup.engines.messages import (
    PROTOCOL_VERSION,
    Abort,
    EngineBeat,
    Hello,
    JobDone,
    JobResult,
    Stop,
    StreamEvent,
    Submit,
    TaskStarted,
    TokenPiece,
    decode_for_engine,
    decode_for_supervisor,
    encode,
    plain,
)
from llmsup.engines.protocol import GenParams
from llmsup.engines.sim import SimBackend
from llmsup.engines.stream import TokenStream
from llmsup.supervisor.cluster.control import ControlChannel
from llmsup.supervisor.cluster.stream_reader import StreamReader
from llmsup.supervisor.metrics.prometheus import Metrics
from support.waiting import eventually_async

pytestmark = pytest.mark.timeout(30)
BIND = "tcp://127.0.0.1"
E = TypeVar("E")
GOOD_PIECE = encode(TokenPiece("job-1#1", 0, "hello "))
# one message per shape: (frames, kind of problem)
GARBAGE: list[tuple[list[bytes], str]] = [
    ([b""], "not json"),
    ([b"\x00\xff\xfe garbage"], "not json"),
    ([b"{\"kind\": \"piece\""], "not json"),
    ([b"[" * 50_000], "not json"),
    ([b"[]"], "not an object"),
    ([b"\"piece\""], "not an object"),
    ([b"null"], "not an object"),
    ([b"{}"], "unknown kind"),
    ([b"{\"kind\": 7, \"version\": 1}"], "unknown kind"),
    ([GOOD_PIECE.replace(b"\"version\":1", b"\"version\":2")], "version"),
    ([GOOD_PIECE.replace(b"\"version\":1", b"\"version\":\"1\"")], "version"),
    ([GOOD_PIECE.replace(b"\"seq\":0", b"\"seq\":\"0\"")], "bad field"),
    ([GOOD_PIECE.replace(b"\"seq\":0", b"\"seq\":-0.5")], "bad field"),
    ([GOOD_PIECE.replace(b"\"text\":\"hello \"", b"\"text\":null")], "bad field"),
    ([encode(EngineBeat(1)).replace(b"\"rss_mb\":0.0", b"\"rss_mb\":NaN")], "bad field"),
    ([encode(JobDone("k", JobResult("completed"))).replace(b"\"completed\"", b"\"finished\"")], "bad field"),
    ([GOOD_PIECE.replace(b",\"seq\":0", b"")], "missing field"),
]
# messages the engines' token stream must not carry (fine elsewhere)
NOT_ON_THE_STREAM: list[tuple[list[bytes], str]] = [
    ([encode(Submit("k", "p", 1.0))], "unknown kind"),  # engine-bound
    ([encode(Hello(1))], "unexpected kind"),  # control channel only
]


def counted(metrics: Metrics, channel: str) -> float:
    return metrics.malformed.labels(channel)._value.get()


def dropped_logs(caplog: pytest.LogCaptureFixture, channel: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"on the {channel} channel" in r.getMessage()]


@pytest.fixture
async def zctx() -> AsyncIterator[zmq.asyncio.Context]:
    ctx = zmq.asyncio.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


async def test_token_stream_drops_garbage_and_keeps_reading(zctx: zmq.asyncio.Context,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "llmsup.wire")
    events: asyncio.Queue[StreamEvent] = asyncio.Queue()
    metrics = Metrics()
    reader = StreamReader(zctx, BIND, events.put_nowait, metrics)
    loop_task = asyncio.ensure_future(reader.run())
    push = zctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(reader.address)
    try:
        for _ in range(2):  # twice: the second round is counted, not logged again
            for frames, _problem in GARBAGE + NOT_ON_THE_STREAM:
                await push.send_multipart(frames)
        good = [TaskStarted("job-1#1"), TokenPiece("job-1#1", 0, "hello "), EngineBeat(3, 1, 2, 99.0),
                JobDone("job-1#1", JobResult("completed", "hello ", 1, "length"))]
        for msg in good:
            await push.send(encode(msg))
        # a batched engine's turn: its events in one message, a frame each; an unreadable frame is dropped alone
        turn = [TokenPiece("job-2#1", 0, "a "), JobDone("job-2#1", JobResult("completed", "a ", 1, "length"))]
        await push.send_multipart([encode(turn[0]), b"job-1#1", encode(turn[1])])
        got = [await asyncio.wait_for(events.get(), 10) for _ in good + turn]  # one PUSH -> PULL pipe: in order
        assert got == good + turn
        assert not loop_task.done()
        assert counted(metrics, "stream") == 2 * len(GARBAGE + NOT_ON_THE_STREAM) + 1
        logged = dropped_logs(caplog, "stream")
        assert len(logged) == len({problem for _, problem in GARBAGE + NOT_ON_THE_STREAM})  # once per (peer, problem)
        assert all("from 127.0.0.1" in line for line in logged)
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        push.close(linger=0)
        reader.close()


async def test_a_failing_sink_does_not_stop_the_stream(zctx: zmq.asyncio.Context,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    seen: list[StreamEvent] = []

    def sink(event: StreamEvent) -> None:
        seen.append(event)
        if len(seen) == 1:
            raise KeyError("a bug in the sink")

    reader = StreamReader(zctx, BIND, sink, Metrics())
    loop_task = asyncio.ensure_future(reader.run())
    push = zctx.socket(zmq.PUSH)
    push.connect(reader.address)
    try:
        await push.send(encode(TaskStarted("a")))
        await push.send(encode(TaskStarted("b")))
        await eventually_async(lambda: len(seen) >= 2, 10, "both events at the sink")
        assert [e.key for e in seen] == ["a", "b"] and not loop_task.done()  # type: ignore[union-attr]
        assert any("TaskStarted" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        push.close(linger=0)
        reader.close()


async def test_control_channel_drops_garbage_and_keeps_reading(zctx: zmq.asyncio.Context,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "llmsup.wire")
    hellos: asyncio.Queue[tuple[int, Hello]] = asyncio.Queue()
    metrics = Metrics()
    channel = ControlChannel(zctx, BIND, metrics)
    loop_task = asyncio.ensure_future(channel.receive(lambda eid, hello: hellos.put_nowait((eid, hello))))
    engine = zctx.socket(zmq.DEALER)
    stranger = zctx.socket(zmq.DEALER)  # an identity that is no engine id
    for sock, identity in ((engine, b"7"), (stranger, b"not-an-engine")):
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(channel.address)
    garbage = [frames for frames, _problem in GARBAGE]
    garbage += [[encode(TokenPiece("k", 0, "x"))], [encode(Submit("k", "p", 1.0))], [encode(Hello(1)), b"extra"],
                [b""] * 3]
    try:
        for frames in garbage:
            await engine.send_multipart(frames)
        await stranger.send(encode(Hello(5)))
        await engine.send(encode(Hello(os.getpid())))
        assert await asyncio.wait_for(hellos.get(), 10) == (7, Hello(os.getpid()))
        assert not loop_task.done()
        end = time.monotonic() + 10  # the stranger's message travels on its own connection
        while counted(metrics, "control") < len(garbage) + 1 and time.monotonic() < end:
            await asyncio.sleep(0.01)
        assert counted(metrics, "control") == len(garbage) + 1
        logged = dropped_logs(caplog, "control")
        assert sum("not-an-engine" in line for line in logged) == 1
        # ops go out to a connected engine; an engine that is not connected is a failed send, not a silent drop
        assert channel.send(7, Abort("job-1#1", "cancelled")) and channel.send(7, Stop())
        assert decode_for_engine(await asyncio.wait_for(engine.recv(), 10)) == Abort("job-1#1", "cancelled")
        assert decode_for_engine(await asyncio.wait_for(engine.recv(), 10)) == Stop()
        assert not channel.send(8, Stop())  # 8: not connected
        # a turn's queued ops go out in one message per engine, in order, before any later op to that engine
        failed: list[str] = []
        channel.queue(7, Submit("job-2#1", "a", 1.0), lambda: failed.append("job-2#1"))
        channel.queue(7, Submit("job-3#1", "b", 1.0), lambda: failed.append("job-3#1"))
        channel.queue(8, Submit("job-4#1", "c", 1.0), lambda: failed.append("job-4#1"))
        assert channel.send(7, Abort("job-2#1", "cancelled"))
        frames = await asyncio.wait_for(engine.recv_multipart(), 10)
        assert [decode_for_engine(f) for f in frames] == [Submit("job-2#1", "a", 1.0), Submit("job-3#1", "b", 1.0)]
        assert decode_for_engine(await asyncio.wait_for(engine.recv(), 10)) == Abort("job-2#1", "cancelled")
        channel.queue(7, Submit("job-5#1", "d", 1.0), lambda: failed.append("job-5#1"))
        channel.flush()
        assert decode_for_engine(await asyncio.wait_for(engine.recv(), 10)) == Submit("job-5#1", "d", 1.0)
        assert failed == ["job-4#1"]  # engine 8 is not connected: its submit is reported, not dropped silently
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        engine.close(linger=0)
        stranger.close(linger=0)
        channel.close()


@pytest.fixture
def sim_runtime() -> Iterator[zmq.Socket]:
    """This process as a batched sim engine whose token stream goes to the PULL socket yielded."""
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port(BIND)
    saved = runtime._RUNTIME
    stream = TokenStream(f"{BIND}:{port}")
    runtime._RUNTIME = runtime.EngineRuntime(5, SimBackend(token_s=0.001), stream, "")
    try:
        yield pull
    finally:
        runtime._RUNTIME = saved
        stream.close()
        pull.close(linger=0)


def test_batched_engine_loop_survives_unreadable_control_messages(sim_runtime: zmq.Socket,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "llmsup.engine")
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port(BIND)
    server = BatchServer({"identity": 5, "control_address": f"{BIND}:{port}"})
    try:
        server.ctl.send(encode(Hello(os.getpid())))  # what serve() says first: the ROUTER learns the route
        assert router.poll(10_000)
        identity, _ = router.recv_multipart()
        garbage = [frames for frames, _problem in GARBAGE]
        garbage += [[encode(Hello(1))], [encode(TokenPiece("k", 0, "x"))],
                    [encode(Submit("k", "p", 1.0)).replace(b"\"deadline_s\":1.0", b"\"deadline_s\":\"1\"")],
                    [encode(Submit("k", "p", 1.0)).replace(b",\"deadline_s\":1.0", b"")],
                    [plain_submit_of_version(PROTOCOL_VERSION + 1)]]
        for frames in garbage:
            router.send_multipart([identity, *frames])
        # a turn's submits in one message, a frame each; an unreadable frame among them is dropped alone
        router.send_multipart([identity, encode(Submit("job-9#1", "one two three", 5.0, GenParams(max_tokens=3))),
                               b"{}", encode(Submit("job-9#2", "four", 5.0, GenParams(max_tokens=1)))])
        done = {d.key: d for d in (next_event(server, sim_runtime, JobDone) for _ in range(2))}
        assert done["job-9#1"].result.outcome == "completed" and done["job-9#1"].result.tokens == 3
        assert done["job-9#1"].result.text == "one two three "
        assert done["job-9#2"].result.outcome == "completed" and done["job-9#2"].result.text == "four "
        assert server.malformed == len(garbage) + 1 and not server.stopping
        server._last_beat = 0.0  # the next turn beats, carrying the count
        assert next_event(server, sim_runtime, EngineBeat).malformed == len(garbage) + 1
        logged = [r.getMessage() for r in caplog.records if "unreadable control message" in r.getMessage()]
        problems = [re.search(r"message \((.+?):", line).group(1) for line in logged]  # type: ignore[union-attr]
        assert sorted(problems) == sorted({"not json", "not an object", "unknown kind", "version", "bad field",
                                           "missing field"})  # once per kind of problem
        router.send_multipart([identity, encode(Stop())])
        end = time.monotonic() + 10
        while not server.stopping and time.monotonic() < end:
            server._turn()
        assert server.stopping
    finally:
        server.ctl.close(linger=0)
        router.close(linger=0)


_UNREAD: dict[int, list[object]] = {}  # events of a turn's message not yet asked for, per serving loop


def next_event(server: BatchServer, pull: zmq.Socket, kind: type[E]) -> E:
    """Turn the serving loop until an event of ``kind`` comes out of its token stream (a turn's events come in
    one message, a frame each: the others are kept for the next call)."""
    unread = _UNREAD.setdefault(id(server), [])
    end = time.monotonic() + 10
    while time.monotonic() < end:
        for i, event in enumerate(unread):
            if isinstance(event, kind):
                del unread[i]
                return event
        server._turn()
        while pull.poll(0):
            unread += [decode_for_supervisor(frame) for frame in pull.recv_multipart()]
    raise AssertionError(f"no {kind.__name__} from the serving loop in 10 s")


def plain_submit_of_version(version: int) -> bytes:
    return json.dumps({**plain(Submit("k", "p", 1.0)), "version": version}).encode()


async def test_a_frame_over_the_limit_drops_its_sender_not_the_reader(zctx: zmq.asyncio.Context) -> None:
    events: asyncio.Queue[StreamEvent] = asyncio.Queue()
    reader = StreamReader(zctx, BIND, events.put_nowait, Metrics(), max_message_bytes=4096)
    assert reader.sock.getsockopt(zmq.RCVHWM) > 0  # a bounded queue per peer
    loop_task = asyncio.ensure_future(reader.run())
    big, small = zctx.socket(zmq.PUSH), zctx.socket(zmq.PUSH)
    for sock in (big, small):
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(reader.address)
    try:
        await big.send(encode(TokenPiece("job-1#1", 0, "x" * 10_000)))  # over the limit: never delivered
        await small.send(encode(TaskStarted("job-2#1")))
        assert await asyncio.wait_for(events.get(), 10) == TaskStarted("job-2#1")
        await small.send(encode(TokenPiece("job-2#1", 0, "y" * 1000)))
        assert await asyncio.wait_for(events.get(), 10) == TokenPiece("job-2#1", 0, "y" * 1000)
        assert events.empty() and not loop_task.done()
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        big.close(linger=0)
        small.close(linger=0)
        reader.close()
