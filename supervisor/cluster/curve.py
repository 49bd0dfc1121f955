"""CURVE security for llmsup's own channels (the token stream and the control channel), as IPyParallel's.

Both channels are CurveZMQ servers: traffic is encrypted, and a ZAP handler on the supervisor's zmq context
lets in only peers that hold the client key pair written to the join file (and handed to the engines this
supervisor initialises, over IPyParallel's own CURVE-encrypted channel). A peer without the keys fails the
handshake: it gets nothing and its bytes never reach a reader loop. ``ZAP_ENFORCE_DOMAIN`` makes a socket
refuse every peer while no handler answers, so there is no window before the handler starts.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.utils.z85

log = logging.getLogger("llmsup.curve")
ZAP_DOMAIN = "llmsup"


@dataclass(frozen=True)
class ChannelKeys:
    """Z85-encoded CURVE key pairs: the channels' (server) and the one their peers (clients) present."""

    server_public: str
    server_secret: str
    client_public: str
    client_secret: str

    @classmethod
    def generate(cls) -> ChannelKeys:
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(server_public.decode(), server_secret.decode(), client_public.decode(), client_secret.decode())

    def for_clients(self) -> dict[str, str]:
        """What a peer needs to connect (the engines' ``channel_keys``, the join file's ``curve``)."""
        return {"server_public": self.server_public, "client_public": self.client_public,
                "client_secret": self.client_secret}


MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # no message of llmsup's channels comes near; a larger frame drops its peer
RCVHWM = 100_000  # messages queued per peer connection before zmq stops reading from it (the peer waits)


def limit_frames(sock: zmq.Socket, max_bytes: int = MAX_MESSAGE_BYTES, rcvhwm: int = RCVHWM) -> None:
    """Bound what one peer can make this server hold: a message over ``max_bytes`` disconnects that peer (zmq's
    ``MAXMSGSIZE``; it reconnects, its oversized message is gone), and at most ``rcvhwm`` messages wait per peer."""
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)


def secure_server(sock: zmq.Socket, keys: ChannelKeys) -> None:
    """Make ``sock`` (before it binds) a CURVE server that only admits peers the ZAP handler allows."""
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    sock.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.server_secret.encode())


class ChannelGate:
    """The ZAP handler of one zmq context: admits the client key of ``keys``, nothing else.

    It answers in a thread of its own (ZAP, RFC 27, over ``inproc://zeromq.zap.01``): a handshake never waits
    for the supervisor's event loop."""

    ENDPOINT = "inproc://zeromq.zap.01"

    def __init__(self, ctx: zmq.Context[Any], keys: ChannelKeys) -> None:
        self.allowed = zmq.utils.z85.decode(keys.client_public.encode())
        self.refused = 0
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(ctx.underlying)  # a blocking view of the same context
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(self.ENDPOINT)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="llmsup-zap", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while not self._stopped.is_set():
                if self._sock.poll(100):
                    self._sock.send_multipart(self._answer(self._sock.recv_multipart()))
        except zmq.ZMQError as exc:  # the context is going away
            if not self._stopped.is_set():
                log.error("the ZAP handler of llmsup's channels stopped: %s", exc)
        finally:
            self._sock.close(linger=0)

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        """[version, request id, domain, address, identity, mechanism, credentials...] -> the ZAP reply."""
        if len(frames) < 6:
            return [b"1.0", b"", b"500", b"malformed request", b"", b""]
        version, request_id, _domain, _address, _identity, mechanism = frames[:6]
        allowed = mechanism == b"CURVE" and frames[6:7] == [self.allowed]
        if not allowed:
            self.refused += 1
            if self.refused == 1:
                log.warning("refused a peer on llmsup's channels: unknown CURVE key (further refusals are not logged)")
        return [version, request_id, b"200" if allowed else b"400", b"OK" if allowed else b"unknown key", b"", b""]

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)
