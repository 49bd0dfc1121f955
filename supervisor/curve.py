"""CURVE security for llmsup's own channels (the token stream and the control channel), as IPyParallel's.

Both channels are CurveZMQ servers: traffic is encrypted, and a ZAP handler on the supervisor's zmq context
lets in only peers that hold the client key pair written to the join file (and handed to the engines this
supervisor initialises, over IPyParallel's own CURVE-encrypted channel). A peer without the keys fails the
handshake: it gets nothing and its bytes never reach a reader loop. ``ZAP_ENFORCE_DOMAIN`` makes a socket
refuse every peer while no handler answers, so there is no window before the handler starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

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


def secure_server(sock: zmq.Socket, keys: ChannelKeys) -> None:
    """Make ``sock`` (before it binds) a CURVE server that only admits peers the ZAP handler allows."""
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    sock.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.server_secret.encode())


class _ClientKeyCheck:
    def __init__(self, allowed: str) -> None:
        self.allowed = allowed.encode()
        self.refused = 0

    def callback(self, domain: str, key: bytes) -> bool:
        if key == self.allowed:
            return True
        self.refused += 1
        if self.refused == 1:
            log.warning("refused a peer on llmsup's channels: unknown CURVE key (further refusals are not logged)")
        return False


class ChannelGate:
    """The ZAP handler of one zmq context: admits the client key of ``keys``, nothing else."""

    def __init__(self, ctx: zmq.asyncio.Context, keys: ChannelKeys) -> None:
        self.check = _ClientKeyCheck(keys.client_public)
        self.auth = AsyncioAuthenticator(ctx, log=logging.getLogger("llmsup.curve.zap"))
        self.auth.start()
        self.auth.configure_curve_callback(ZAP_DOMAIN, self.check)

    @property
    def refused(self) -> int:
        return self.check.refused

    def close(self) -> None:
        self.auth.stop()
