"""The supervisor's end of the engines' token stream (a pyzmq PULL socket).

Engines push typed messages (``engines/messages.py``): :class:`TaskStarted`, :class:`TokenPiece`,
:class:`JobDone`, :class:`EngineBeat`. The reader decodes each one and hands it to the one sink given at
construction. A message it cannot read (wrong frame count, not JSON, another protocol version, a wrong
field type, a kind that does not belong on this stream) is dropped and counted; a sink that raises is
logged. Neither stops the loop. With keys, the socket is a CURVE server that admits only peers holding
known keys (``supervisor/cluster/curve.py``): others never get a message through; and ``check`` (the supervisor's)
is asked whether each message's sender may send it (an engine's beat names that engine, a job's message is about a
job on that engine): one that may not is dropped and counted as a malformed one, logged once per sender.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq
import zmq.asyncio

from llmsup.engines.messages import STREAM_EVENTS, ProtocolError, StreamEvent, decode_for_supervisor
from llmsup.supervisor.cluster.curve import MAX_MESSAGE_BYTES, ChannelKeys, limit_frames, secure_server, sender_of
from llmsup.supervisor.cluster.malformed import MalformedLog
from llmsup.supervisor.metrics.prometheus import Metrics

log = logging.getLogger("llmsup.stream")
YIELD_EVERY = 64


def peer_of(frame: zmq.Frame) -> str:
    """The sender's address as zmq knows it (TCP peers), else "unknown"."""
    try:
        return str(frame.get("Peer-Address"))
    except zmq.ZMQError:
        return "unknown"


def decode_frame(frame: zmq.Frame) -> StreamEvent:
    return decode_for_supervisor(frame.bytes, expect=STREAM_EVENTS)


class StreamReader:
    def __init__(self, ctx: zmq.asyncio.Context, bind: str, on_event: Callable[[StreamEvent], None],
                 metrics: Metrics, keys: ChannelKeys | None = None, advertise: str | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES,
                 check: Callable[[StreamEvent, str], bool] | None = None) -> None:
        self.on_event = on_event
        self.check = check
        self.malformed = MalformedLog(metrics.malformed, "stream")
        self.sock = ctx.socket(zmq.PULL)
        limit_frames(self.sock, max_message_bytes)
        self.sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            secure_server(self.sock, keys)
        port = self.sock.bind_to_random_port(bind)
        self.address = f"{advertise or bind}:{port}"  # where engines connect (``advertise``: bound to every interface)

    async def run(self) -> None:
        """Read until cancelled. A receive that finds messages waiting returns without giving the event loop a
        turn: after a backlog (many engines beating, the loop held up), reading it all in one go would hold up
        the timers and dispatch for as long; so the loop gets a turn every YIELD_EVERY events (a message holds one or more)."""
        read = 0
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            read += len(frames)
            if read >= YIELD_EVERY:
                read = 0
                await asyncio.sleep(0)
            sender = sender_of(frames[0])
            for frame in frames:  # a frame an event (a batched engine sends a turn's events in one message)
                self._one(frame, sender)

    def _one(self, frame: zmq.Frame, sender: str | None) -> None:
        try:
            event = decode_frame(frame)
        except ProtocolError as exc:
            self.malformed.reject(peer_of(frame), exc)
            return
        if self.check is not None and sender is not None and not self.check(event, sender):
            self.malformed.reject(sender, ProtocolError("sender", f"{type(event).__name__} is not {sender}'s to send"))
            return
        try:
            self.on_event(event)
        except Exception:  # a failing sink is a bug to log, not a reason to stop the stream
            log.exception("handling %s from the token stream failed", type(event).__name__)

    def close(self) -> None:
        self.sock.close(linger=0)
