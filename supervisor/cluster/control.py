"""The supervisor's end of batched engines' control channel (a pyzmq ROUTER).

Each batched engine's serving loop (engines/batch.py) connects a DEALER and says :class:`Hello` on it (again every
second); :class:`Submit`, :class:`Abort` and :class:`Stop` go out here; tokens and results come back on the shared
token stream. A host's join agent (``llmsup join``) connects a DEALER and beats :class:`HostBeat` on it; its
:class:`HostOrder` s go out here. A message that cannot be read is dropped, counted and logged once per peer and
problem; the loop goes on.

With keys (always, but in tests of the wire alone), the socket is a CURVE server that admits only peers holding
known keys, each named by its key (``supervisor/cluster/curve.py``), and a peer is addressed by its key, never by
an identity it claims: each message from a key tells which connection that key is on now (a peer that
reconnects is found on its new one; there is no ``ROUTER_HANDOVER``, and no identity to take over). An engine's
hello is taken from that engine's own key only, a join agent's beat from its own key only; under the join file's
key a beat is only a request to admit the agent's own key (``on_enrol``). Without keys, a peer is named by the
DEALER identity it sets.

The submits of one event-loop turn to one engine go out in one message, a frame each (``queue``): one send
per engine and turn, not per job; any other op to that engine sends them first, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

import zmq
import zmq.asyncio

from llmsup.engines.messages import ControlOp, Hello, HostBeat, HostOrder, ProtocolError, decode_for_supervisor, encode
from llmsup.supervisor.cluster.curve import (
    AGENT,
    MAX_MESSAGE_BYTES,
    SHARED,
    ChannelGate,
    ChannelKeys,
    engine_of,
    limit_frames,
    secure_server,
    sender_of,
)
from llmsup.supervisor.cluster.malformed import MalformedLog
from llmsup.supervisor.cluster.stream_reader import YIELD_EVERY
from llmsup.supervisor.metrics.prometheus import Metrics

log = logging.getLogger("llmsup.batching")
OnHello = Callable[[int, Hello], None]
OnHost = Callable[[str, HostBeat], None]
OnEnrol = Callable[[HostBeat], HostOrder | None]


def read_message(frames: list[bytes]) -> tuple[bytes, Hello | HostBeat]:
    """``[routing id, message]`` from the ROUTER: the connection it came on and the message."""
    if len(frames) != 2:
        raise ProtocolError("frames", f"{len(frames) - 1} frames after the identity, a message is one")
    route, raw = frames
    return route, cast("Hello | HostBeat", decode_for_supervisor(raw, expect=(Hello, HostBeat)))


def claimed_engine(route: bytes) -> int:
    """Without keys: the engine a DEALER identity names (``<id>``, or ``<id>.<anything>``)."""
    try:
        return int(route.decode("ascii").partition(".")[0])
    except ValueError:
        raise ProtocolError("identity", f"identity {route[:40]!r} is not an engine id") from None


def _log_failure(peer: str, sent: asyncio.Future[zmq.MessageTracker | None]) -> bool:
    """Log a failed send; True if it failed."""
    exc = None if sent.cancelled() else sent.exception()
    if exc is not None:
        log.warning("control message to %s failed: %s", peer, exc)
    return exc is not None or sent.cancelled()


def _guard(call: Callable[[], None], what: str) -> None:
    try:
        call()
    except Exception:  # a failing handler is a bug to log, not a reason to stop the channel
        log.exception("handling the %s failed", what)


class ControlChannel:
    def __init__(self, ctx: zmq.asyncio.Context, bind: str, metrics: Metrics, keys: ChannelKeys | None = None,
                 advertise: str | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 gate: ChannelGate | None = None) -> None:
        self.malformed = MalformedLog(metrics.malformed, "control")
        self.gate = gate  # tells senders whose keys were revoked (their old connections may still deliver)
        self._routes: dict[str, bytes] = {}  # peer (engine:<id>, agent:<n>, or a keyless identity) -> its connection
        # peer -> this turn's ops for it (encoded) and what to call if they cannot be sent
        self._outbox: dict[str, tuple[list[bytes], list[Callable[[], None]]]] = {}
        self.sock = ctx.socket(zmq.ROUTER)
        limit_frames(self.sock, max_message_bytes)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown or gone peer is an error, not a silent drop
        self.sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            secure_server(self.sock, keys)
        port = self.sock.bind_to_random_port(bind)
        self.address = f"{advertise or bind}:{port}"

    def route(self, peer: str) -> bytes | None:
        """The connection ``peer`` last spoke on (None: not heard)."""
        return self._routes.get(peer)

    def forget(self, engine_id: int) -> None:
        self._routes.pop(f"engine:{engine_id}", None)

    def forget_peer(self, peer: str) -> None:
        self._routes.pop(peer, None)

    def send(self, engine_id: int, op: ControlOp) -> bool:
        """Send one control op to a batched engine (after what is queued for it); False if it is not connected."""
        peer = f"engine:{engine_id}"
        if peer in self._outbox:
            self._flush_one(peer, self._outbox.pop(peer))
        return self._send(peer, [encode(op)])

    def queue(self, engine_id: int, op: ControlOp, failed: Callable[[], None]) -> None:
        """Send ``op`` at the end of this turn with the turn's other ops to that engine, in one message;
        ``failed()`` if that engine turns out not to be connected then."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self.flush)
        frames, callbacks = self._outbox.setdefault(f"engine:{engine_id}", ([], []))
        frames.append(encode(op))
        callbacks.append(failed)

    def flush(self) -> None:
        """Send what is queued (each engine's ops in one message)."""
        outbox, self._outbox = self._outbox, {}
        for peer, pending in outbox.items():
            self._flush_one(peer, pending)

    def _flush_one(self, peer: str, pending: tuple[list[bytes], list[Callable[[], None]]]) -> None:
        frames, callbacks = pending
        if not self._send(peer, frames):
            for failed in callbacks:
                failed()

    def order(self, agent: str, op: HostOrder) -> bool:
        """Send an order to a join agent (by its sender name); False if it is not connected."""
        return self._send(agent, [encode(op)])

    def _send(self, peer: str, frames: list[bytes], route: bytes | None = None) -> bool:
        route = route if route is not None else self._routes.get(peer)
        if route is None:
            log.warning("control message to %s not sent: not connected", peer)
            return False
        # A non-blocking send on an asyncio socket is tried at once and its Future comes back done, holding the
        # error of a peer that is not connected (ROUTER_MANDATORY): read it there, or it is lost.
        # (pyzmq annotates the result as an Awaitable; an asyncio socket's send returns an asyncio Future)
        sent = cast("asyncio.Future[zmq.MessageTracker | None]",
                    self.sock.send_multipart([route, *frames], flags=zmq.NOBLOCK))
        if not sent.done():  # queued behind another send: its outcome is only logged
            sent.add_done_callback(lambda fut: _log_failure(peer, fut))
            return True
        return not _log_failure(peer, sent)

    async def receive(self, on_hello: OnHello, on_host: OnHost | None = None, on_enrol: OnEnrol | None = None) -> None:
        """Read until cancelled: an engine's first hello goes to ``on_hello(engine_id, hello)`` (later ones only
        say where it is connected now), a join agent's beat to ``on_host(agent, beat)``, a request to admit an
        agent's key to ``on_enrol(beat)``, whose answer goes back on that connection."""
        read = 0
        while True:
            parts = await self.sock.recv_multipart(copy=False)
            read += 1
            if read % YIELD_EVERY == 0:  # a backlog is not read in one go (see StreamReader.run)
                await asyncio.sleep(0)
            self._take([part.bytes for part in parts], sender_of(parts[-1]), on_hello, on_host, on_enrol)

    def _take(self, frames: list[bytes], sender: str | None, on_hello: OnHello, on_host: OnHost | None,
              on_enrol: OnEnrol | None) -> None:
        try:
            route, message = read_message(frames)
            peer = sender if sender is not None else route.decode("ascii", "replace")
            if sender is not None and self.gate is not None and not self.gate.admits(sender):
                raise ProtocolError("revoked", f"{type(message).__name__} from {sender}, whose key was revoked")
            if isinstance(message, Hello):
                engine_id = engine_of(sender) if sender is not None else claimed_engine(route)
                if engine_id is None:  # a key speaks for its own engine only; the join file's and agents' for none
                    raise ProtocolError("sender", f"a hello from {sender}, which is no engine's key")
                peer = f"engine:{engine_id}"
                first = self._routes.get(peer) is None
                self._routes[peer] = route
                if first:
                    _guard(lambda: on_hello(engine_id, message), f"hello from {peer}")
            elif sender == SHARED:
                self._enrol(route, message, on_enrol)
            elif on_host is None or not (sender is None or sender.startswith(AGENT)):
                raise ProtocolError("sender", f"a host beat from {sender}, which is no join agent's key")
            else:
                self._routes[peer] = route
                _guard(lambda: on_host(peer, message), f"host beat from {peer}")
        except ProtocolError as exc:
            self.malformed.reject(sender or f"identity {frames[0][:40]!r}", exc)

    def _enrol(self, route: bytes, beat: HostBeat, on_enrol: OnEnrol | None) -> None:
        if on_enrol is None or not beat.agent_key:
            raise ProtocolError("sender", "a host beat under the join file's key without a key of its own to admit")
        try:
            answer = on_enrol(beat)
        except Exception:  # a failing handler is a bug to log, not a reason to stop the channel
            log.exception("admitting the join agent of %s failed", beat.host)
            return
        if answer is not None:
            self._send(f"the join agent of {beat.host} (join file's key)", [encode(answer)], route)

    def close(self) -> None:
        self.sock.close(linger=0)
