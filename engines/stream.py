"""Token stream from an engine to the supervisor over a pyzmq PUSH socket.

Each message is one frame holding one typed message of ``engines/messages.py``
(a :class:`TokenPiece` per piece of text, :class:`TaskStarted`, and from
batched engines :class:`JobDone` and :class:`EngineBeat`). Sends never block:
if the supervisor is gone or slow past the high-water mark, messages are
dropped; an unbatched job's final output always comes back as its task's
return value.
"""

from __future__ import annotations

from collections.abc import Mapping

import zmq

from llmsup.engines.messages import Message, TokenPiece, encode

ChannelKeys = Mapping[str, str]  # server_public, client_public, client_secret (Z85), from the engine config


def secure_client(sock: zmq.Socket[bytes], keys: ChannelKeys | None) -> None:
    """Make ``sock`` (before it connects) a CURVE client of llmsup's channels; ``None``: plain (tests only)."""
    if not keys:
        return
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys["server_public"].encode())
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys["client_public"].encode())
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys["client_secret"].encode())


class TokenStream:
    def __init__(self, address: str, keys: ChannelKeys | None = None) -> None:
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.LINGER, 0)
        secure_client(self._sock, keys)
        self._sock.connect(address)
        self.address = address
        self.keys = keys

    def send(self, msg: Message) -> None:
        try:
            self._sock.send(encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        self._sock.close(linger=0)


class JobEmitter:
    """Collects one job's text and forwards each piece to the stream."""

    def __init__(self, key: str, stream: TokenStream | None) -> None:
        self.key = key
        self.stream = stream
        self.pieces: list[str] = []
        self.count = 0  # tokens generated (a token may decode to no text yet)

    def __call__(self, piece: str) -> None:
        # every token is forwarded, even one whose text is not decodable yet: the client sees progress
        # (time to first token) at once, as from vLLM's own server
        self.count += 1
        seq = len(self.pieces)
        self.pieces.append(piece)
        if self.stream is not None:
            self.stream.send(TokenPiece(self.key, seq, piece))

    @property
    def text(self) -> str:
        return "".join(self.pieces)
