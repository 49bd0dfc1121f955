"""CURVE security for llmsup's own channels (the token stream and the control channel), as IPyParallel's.

Both channels are CurveZMQ servers: traffic is encrypted, and a ZAP handler on the supervisor's zmq context
lets in only peers that hold a key it knows, and names each peer by its key (ZAP's User-Id), so the readers check
every message against its sender (``sender_of``):

- ``shared``: the client key pair written to the join file. It speaks for no engine and no host: a join agent uses
  it only to be admitted with a key pair of its own (its beat carries its public key; the secret never leaves its
  host).
- ``agent:<n>``: one join agent's own key (``admit_agent``), bound to the host it first beats for.
- ``engine:<id>/<controller>``: one engine's own key pair, made when the supervisor initialises that engine and
  handed to it over IPyParallel's own CURVE-encrypted channel (a new controller numbers its engines from 0 again:
  the old engine 3's name is not the new one's).

A key is revoked when its engine leaves, or when an admin revokes its host; a revoked key is refused at the
handshake from then on, and the readers drop what still arrives on a connection it made before (``admits``). A
peer without a known key fails the handshake: it gets nothing and its bytes never reach a reader loop.
``ZAP_ENFORCE_DOMAIN`` makes a socket refuse every peer while no handler answers, so there is no window before the
handler starts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.utils.z85

log = logging.getLogger("llmsup.curve")
ZAP_DOMAIN = "llmsup"
SHARED = "shared"  # the sender name of the join file's key (join agents asking to be admitted)
ENGINE = "engine:"  # the sender name of an engine's own key: engine:<id>/<controller generation>
AGENT = "agent:"  # the sender name of a join agent's own key: agent:<n>
MAX_AGENT_KEYS = 10_000  # agent keys admitted at once: a holder of the join file cannot grow the table forever


def sender_of(frame: zmq.Frame) -> str | None:
    """Who sent a message, as the ZAP handler named its key (None: a channel without keys)."""
    try:
        user = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return str(user) if user else None


def engine_of(sender: str) -> int | None:
    """The engine id of an engine's sender name, else None."""
    number = sender[len(ENGINE):].partition("/")[0]
    return int(number) if sender.startswith(ENGINE) and number.isdigit() else None


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
    """The ZAP handler of one zmq context: admits the client key of ``keys`` and the engines' own keys, nothing else.

    It answers in a thread of its own (ZAP, RFC 27, over ``inproc://zeromq.zap.01``): a handshake never waits
    for the supervisor's event loop."""

    ENDPOINT = "inproc://zeromq.zap.01"

    def __init__(self, ctx: zmq.Context[Any], keys: ChannelKeys, on_refused: Callable[[], None] | None = None) -> None:
        self.keys = keys
        self._senders: dict[bytes, str] = {zmq.utils.z85.decode(keys.client_public.encode()): SHARED}
        self._revoked: set[str] = set()  # sender names whose keys were revoked: their old connections are not heard
        self._revoked_keys: set[bytes] = set()  # never admitted again
        self._agents = 0
        self._engines: dict[int, str] = {}  # engine id -> the sender name of its key now
        self._generation = 0  # of the controller: its engines' names carry it
        self.refused = 0
        self.on_refused = on_refused  # counts each refusal (called in the handler's thread)
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
        sender = self._senders.get(frames[6]) if mechanism == b"CURVE" and len(frames) == 7 else None
        if sender is None:
            self.refused += 1
            if self.on_refused is not None:
                self.on_refused()
            if self.refused == 1:
                log.warning("refused a peer on llmsup's channels: unknown CURVE key (further refusals are not logged)")
            return [version, request_id, b"400", b"unknown key", b"", b""]
        return [version, request_id, b"200", b"OK", sender.encode(), b""]

    def engine_keys(self, engine_id: int) -> dict[str, str]:
        """A key pair of this engine's own (what it connects with, as ``channel_keys``), admitted from now on."""
        public, secret = zmq.curve_keypair()
        self.revoke_engine(engine_id)  # its earlier key, if it was given one
        name = self._engines[engine_id] = f"{ENGINE}{engine_id}/{self._generation}"
        self._senders[zmq.utils.z85.decode(public)] = name
        return {"server_public": self.keys.server_public, "client_public": public.decode(),
                "client_secret": secret.decode()}

    def admit_agent(self, public: str) -> str | None:
        """Admit a join agent's own public key (Z85) from now on; its sender name (the same for a key admitted
        already), or None for a key that is malformed, revoked, or one too many."""
        try:
            key = zmq.utils.z85.decode(public.encode("ascii"))
        except (ValueError, UnicodeError):
            return None
        known = self._senders.get(key)
        if known is not None:
            return known if known.startswith(AGENT) else None
        if len(key) != 32 or key in self._revoked_keys or \
                sum(name.startswith(AGENT) for name in self._senders.values()) >= MAX_AGENT_KEYS:
            return None
        self._agents += 1
        name = f"{AGENT}{self._agents}"
        self._senders[key] = name
        return name

    def admits(self, sender: str) -> bool:
        """False for a sender whose key was revoked (its connection made before may still deliver)."""
        return sender not in self._revoked

    def revoke_engine(self, engine_id: int) -> None:
        """Revoke the key this engine was given (``revoke``)."""
        name = self._engines.pop(engine_id, None)
        if name is not None:
            self.revoke(name)

    def revoke_engines(self) -> None:
        """Revoke every engine's key (a new controller: its engines get new ones, under names of its own)."""
        for engine_id in list(self._engines):
            self.revoke_engine(engine_id)
        self._generation += 1

    def revoke(self, sender: str) -> None:
        """Admit that sender's keys no more: a new connection fails the handshake, and what an old one still
        delivers is dropped by the readers (``admits``); the key is never admitted again."""
        self._revoked.add(sender)
        for key in [k for k, name in list(self._senders.items()) if name == sender]:
            self._senders.pop(key, None)
            self._revoked_keys.add(key)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)
