"""The supervisor's end of batched engines' control channel (a pyzmq ROUTER).

Each batched engine's serving loop (engines/batch.py) connects a DEALER whose
identity is its engine id and a secret (``route_for``) and says :class:`Hello` on it; :class:`Submit`,
:class:`Abort` and :class:`Stop` go out here; tokens and results come back on
the shared token stream. The submits of one event-loop turn to one engine go out in one message, a frame each
(``queue``): one send per engine and turn, not per job; any other op to that engine sends them first, in order.
A host's join agent (``llmsup join``) connects a DEALER
whose identity starts with ``host:`` and beats :class:`HostBeat` on it; its
:class:`HostOrder` s go out here. A message that cannot be read is dropped,
counted and logged once per peer and problem; the loop goes on. With keys, the
socket is a CURVE server that admits only peers holding known keys
(``supervisor/cluster/curve.py``), and a message is taken only from the key it belongs to: an engine's hello from
that engine's own key, a join agent's beat from the join file's.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TypeVar, cast

import zmq
import zmq.asyncio

from llmsup.engines.messages import ControlOp, Hello, HostBeat, HostOrder, ProtocolError, decode_for_supervisor, encode
from llmsup.supervisor.cluster.curve import (
    ENGINE,
    MAX_MESSAGE_BYTES,
    SHARED,
    ChannelKeys,
    limit_frames,
    secure_server,
    sender_of,
)
from llmsup.supervisor.cluster.malformed import MalformedLog
from llmsup.supervisor.cluster.stream_reader import YIELD_EVERY
from llmsup.supervisor.metrics.prometheus import Metrics

log = logging.getLogger("llmsup.batching")
P = TypeVar("P")
M = TypeVar("M")


AGENT_PREFIX = b"host:"  # the DEALER identity of a join agent starts with this


def read_host_beat(frames: list[bytes]) -> tuple[str, HostBeat]:
    """``[identity, message]`` from a join agent: its identity (to answer it) and its beat."""
    if len(frames) != 2:
        raise ProtocolError("frames", f"{len(frames) - 1} frames after the identity, a message is one")
    identity, raw = frames
    return identity.decode("ascii", "replace"), decode_for_supervisor(raw, expect=(HostBeat,))


def read_hello(frames: list[bytes]) -> tuple[int, Hello]:
    """``[identity, message]`` from the ROUTER: the engine id (its DEALER identity: ``<id>.<secret>``, or ``<id>``)
    and its hello."""
    if len(frames) != 2:
        raise ProtocolError("frames", f"{len(frames) - 1} frames after the identity, a message is one")
    identity, raw = frames
    try:
        engine_id = int(identity.decode("ascii").partition(".")[0])
    except ValueError:
        raise ProtocolError("identity", f"identity {identity[:40]!r} is not an engine id") from None
    return engine_id, decode_for_supervisor(raw, expect=(Hello,))


def _log_failure(peer: str, sent: asyncio.Future[zmq.MessageTracker | None]) -> bool:
    """Log a failed send; True if it failed."""
    exc = None if sent.cancelled() else sent.exception()
    if exc is not None:
        log.warning("control message to %s failed: %s", peer, exc)
    return exc is not None or sent.cancelled()


class ControlChannel:
    def __init__(self, ctx: zmq.asyncio.Context, bind: str, metrics: Metrics, keys: ChannelKeys | None = None,
                 advertise: str | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.malformed = MalformedLog(metrics.malformed, "control")
        self._routes: dict[int, str] = {}  # engine id -> the identity it connects under (route_for)
        # identity -> this turn's ops for it (encoded) and what to call if they cannot be sent
        self._outbox: dict[str, tuple[list[bytes], list[Callable[[], None]]]] = {}
        self.sock = ctx.socket(zmq.ROUTER)
        limit_frames(self.sock, max_message_bytes)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown or gone engine is an error, not a silent drop
        # a peer that reconnects under its identity takes it over: a join agent after a network cut, an engine's
        # DEALER; with keys, a hello under an engine's identity from another key than that engine's is dropped
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            secure_server(self.sock, keys)
        port = self.sock.bind_to_random_port(bind)
        self.address = f"{advertise or bind}:{port}"

    def route_for(self, engine_id: int) -> str:
        """The DEALER identity this engine is to connect under: its id and a secret, handed to it over IPyParallel,
        so that no other peer can claim its connection (and receive its prompts) by guessing the identity."""
        route = f"{engine_id}.{secrets.token_hex(16)}"
        self._routes[engine_id] = route
        return route

    def forget(self, engine_id: int) -> None:
        self._routes.pop(engine_id, None)

    def send(self, engine_id: int, op: ControlOp) -> bool:
        """Send one control op to a batched engine (after what is queued for it); False if it is not connected."""
        identity = self._routes.get(engine_id, str(engine_id))
        if identity in self._outbox:
            self._flush_one(identity, self._outbox.pop(identity))
        return self._send(identity, [encode(op)])

    def queue(self, engine_id: int, op: ControlOp, failed: Callable[[], None]) -> None:
        """Send ``op`` at the end of this turn with the turn's other ops to that engine, in one message;
        ``failed()`` if that engine turns out not to be connected then."""
        identity = self._routes.get(engine_id, str(engine_id))
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self.flush)
        frames, callbacks = self._outbox.setdefault(identity, ([], []))
        frames.append(encode(op))
        callbacks.append(failed)

    def flush(self) -> None:
        """Send what is queued (each engine's ops in one message)."""
        outbox, self._outbox = self._outbox, {}
        for identity, pending in outbox.items():
            self._flush_one(identity, pending)

    def _flush_one(self, identity: str, pending: tuple[list[bytes], list[Callable[[], None]]]) -> None:
        frames, callbacks = pending
        if not self._send(identity, frames):
            for failed in callbacks:
                failed()

    def order(self, agent: str, op: HostOrder) -> bool:
        """Send an order to a join agent (by the identity it beats under); False if it is not connected."""
        return self._send(agent, [encode(op)])

    def _send(self, identity: str, frames: list[bytes]) -> bool:
        # A non-blocking send on an asyncio socket is tried at once and its Future comes back done, holding the
        # error of a peer that is not connected (ROUTER_MANDATORY): read it there, or it is lost.
        # (pyzmq annotates the result as an Awaitable; an asyncio socket's send returns an asyncio Future)
        sent = cast("asyncio.Future[zmq.MessageTracker | None]",
                    self.sock.send_multipart([identity.encode(), *frames], flags=zmq.NOBLOCK))
        if not sent.done():  # queued behind another send: its outcome is only logged
            sent.add_done_callback(lambda fut: _log_failure(identity, fut))
            return True
        return not _log_failure(identity, sent)

    async def receive(self, on_hello: Callable[[int, Hello], None],
                      on_host: Callable[[str, HostBeat], None] | None = None) -> None:
        """Read until cancelled: every engine's hello goes to ``on_hello(engine_id, hello)``, every join agent's
        beat to ``on_host(identity, beat)``."""
        read = 0
        while True:
            parts = await self.sock.recv_multipart(copy=False)
            read += 1
            if read % YIELD_EVERY == 0:  # a backlog is not read in one go (see StreamReader.run)
                await asyncio.sleep(0)
            sender = sender_of(parts[-1])  # as the ZAP handler named the peer's key (None: no keys)
            frames = [part.bytes for part in parts]
            if on_host is not None and frames[0].startswith(AGENT_PREFIX):
                self._handle(frames, read_host_beat, on_host, sender, lambda _: SHARED)
            else:
                self._handle(frames, read_hello, on_hello, sender, lambda engine_id: f"{ENGINE}{engine_id}")

    def _handle(self, frames: list[bytes], read: Callable[[list[bytes]], tuple[P, M]],
                handler: Callable[[P, M], None], sender: str | None, expected: Callable[[P], str]) -> None:
        try:
            peer, message = read(frames)
        except ProtocolError as exc:
            self.malformed.reject(f"identity {frames[0][:40]!r}", exc)
            return
        if sender is not None and sender != expected(peer):  # a key speaks for its own engine, the shared one for none
            self.malformed.reject(sender, ProtocolError("sender", f"{type(message).__name__} as {peer} from {sender}"))
            return
        try:
            handler(peer, message)
        except Exception:  # a failing handler is a bug to log, not a reason to stop the channel
            log.exception("handling %s from %s failed", type(message).__name__, peer)

    def close(self) -> None:
        self.sock.close(linger=0)
