"""The supervisor's end of batched engines' control channel (a pyzmq ROUTER).

Each batched engine's serving loop (engines/batch.py) connects a DEALER whose
identity is its engine id and says :class:`Hello` on it; :class:`Submit`,
:class:`Abort` and :class:`Stop` go out here; tokens and results come back on
the shared token stream. A message that cannot be read is dropped, counted and
logged once per peer and problem; the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq
import zmq.asyncio

from llmsup.engines.messages import ControlOp, Hello, ProtocolError, decode_for_supervisor, encode
from llmsup.supervisor.malformed import MalformedLog
from llmsup.supervisor.metrics import Metrics

log = logging.getLogger("llmsup.batching")


def read_hello(frames: list[bytes]) -> tuple[int, Hello]:
    """``[identity, message]`` from the ROUTER: the engine id (its DEALER identity) and its hello."""
    if len(frames) != 2:
        raise ProtocolError("frames", f"{len(frames) - 1} frames after the identity, a message is one")
    identity, raw = frames
    try:
        engine_id = int(identity.decode("ascii"))
    except ValueError:
        raise ProtocolError("identity", f"identity {identity[:40]!r} is not an engine id") from None
    return engine_id, decode_for_supervisor(raw, expect=(Hello,))


def _log_failure(engine_id: int, sent: asyncio.Future) -> bool:
    """Log a failed send; True if it failed."""
    exc = None if sent.cancelled() else sent.exception()
    if exc is not None:
        log.warning("control message to engine %s failed: %s", engine_id, exc)
    return exc is not None or sent.cancelled()


class ControlChannel:
    def __init__(self, ctx: zmq.asyncio.Context, bind: str, metrics: Metrics) -> None:
        self.malformed = MalformedLog(metrics.malformed, "control")
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown or gone engine is an error, not a silent drop
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port(bind)
        self.address = f"{bind}:{port}"

    def send(self, engine_id: int, op: ControlOp) -> bool:
        """Send one control op to a batched engine; False if it is not connected."""
        frame = encode(op)
        # A non-blocking send on an asyncio socket is tried at once and its Future comes back done, holding the
        # error of an engine that is not connected (ROUTER_MANDATORY): read it there, or it is lost.
        sent = self.sock.send_multipart([str(engine_id).encode(), frame], flags=zmq.NOBLOCK)
        if not sent.done():  # queued behind another send: its outcome is only logged
            sent.add_done_callback(lambda fut: _log_failure(engine_id, fut))
            return True
        return not _log_failure(engine_id, sent)

    async def receive(self, on_hello: Callable[[int, Hello], None]) -> None:
        """Read until cancelled: every hello goes to ``on_hello(engine_id, hello)``."""
        while True:
            frames = await self.sock.recv_multipart()
            try:
                engine_id, hello = read_hello(frames)
            except ProtocolError as exc:
                self.malformed.reject(f"identity {frames[0][:40]!r}", exc)
                continue
            try:
                on_hello(engine_id, hello)
            except Exception:  # a failing handler is a bug to log, not a reason to stop the channel
                log.exception("handling the hello of engine %s failed", engine_id)

    def close(self) -> None:
        self.sock.close(linger=0)
