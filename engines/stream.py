"""Token stream from an engine to the supervisor over a pyzmq PUSH socket.

Each frame holds one typed message of ``engines/messages.py``
(a :class:`TokenPiece` per generated token, with its id and logprob when the request
asked for them, :class:`TaskStarted`, and from batched engines :class:`JobDone`
and :class:`EngineBeat`); a zmq message holds one frame, or, from a batched engine's
turn (``hold`` ... ``flush``), every frame of that turn. Sends never block:
if the supervisor is gone or slow past the high-water mark, messages are
dropped; an unbatched job's final output always comes back as its task's
return value.
"""

from __future__ import annotations

from collections.abc import Mapping

import zmq

from llmsup.engines.messages import Message, TokenPiece, encode
from llmsup.engines.protocol import TokenLogprob

ChannelKeys = Mapping[str, str]  # server_public, client_public, client_secret (Z85), from the engine config


def secure_client(sock: zmq.Socket[object], keys: ChannelKeys | None) -> None:
    """Make ``sock`` (a blocking or an asyncio one, before it connects) a CURVE client of llmsup's channels;
    ``None``: plain (tests only)."""
    if not keys:
        return
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys["server_public"].encode())
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys["client_public"].encode())
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys["client_secret"].encode())


class TokenStream:
    def __init__(self, address: str, keys: ChannelKeys | None = None) -> None:
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.LINGER, 0)
        secure_client(self._sock, keys)
        self._sock.connect(address)
        self.address = address
        self.keys = keys

        self._held: list[bytes] | None = None

    def send(self, msg: Message) -> None:
        if self._held is not None:
            self._held.append(encode(msg))
        else:
            self._send([encode(msg)])

    def hold(self) -> None:
        """Keep what is sent until ``flush``, then send it as one message (a frame each)."""
        if self._held is None:
            self._held = []

    def flush(self) -> None:
        frames, self._held = self._held, None
        if frames:
            self._send(frames)

    def _send(self, frames: list[bytes]) -> None:
        try:
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        self._sock.close(linger=0)


class JobEmitter:
    """Collects one job's tokens and forwards each to the stream (a :class:`TokenCallback`).

    A piece carries its token's id only when the request asked for token ids (``want_ids``) and its logprob
    record only when it asked for logprobs (``want_logprobs``): no extra bytes per token otherwise. What it
    collected is the partial output of an interrupted job.
    """

    def __init__(self, key: str, stream: TokenStream | None, want_ids: bool = False,
                 want_logprobs: bool = False) -> None:
        self.key = key
        self.stream = stream
        self.want_ids = want_ids
        self.want_logprobs = want_logprobs
        self.pieces: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.token_ids: list[int] = []
        self.count = 0  # tokens generated (a token may decode to no text yet)

    def __call__(self, piece: str, token_id: int | None = None, logprob: TokenLogprob | None = None, /) -> None:
        # every token is forwarded, even one whose text is not decodable yet: the client sees progress
        # (time to first token) at once, as from vLLM's own server
        self.count += 1
        seq = len(self.pieces)
        self.pieces.append(piece)
        if not self.want_ids:
            token_id = None
        elif token_id is not None:
            self.token_ids.append(token_id)
        if not self.want_logprobs:
            logprob = None
        elif logprob is not None:
            self.logprobs.append(logprob)
        if self.stream is not None:
            self.stream.send(TokenPiece(self.key, seq, piece, token_id, logprob))

    @property
    def text(self) -> str:
        return "".join(self.pieces)
