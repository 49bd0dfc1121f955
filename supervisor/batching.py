"""The supervisor's end of batched engines' control channel (a pyzmq ROUTER).

Each batched engine's serving loop (engines/batch.py) connects a DEALER whose
identity is its engine id and says hello on it; requests, aborts and stop go
out here; tokens and results come back on the shared token stream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

log = logging.getLogger("llmsup.batching")


class ControlChannel:
    def __init__(self, ctx: zmq.asyncio.Context, bind: str) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown or gone engine is an error, not a silent drop
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port(bind)
        self.address = f"{bind}:{port}"

    def send(self, engine_id: int, msg: dict[str, Any]) -> bool:
        """Send one message to a batched engine; False if it is not connected."""
        try:
            self.sock.send_multipart([str(engine_id).encode(), json.dumps(msg).encode()], flags=zmq.NOBLOCK)
            return True
        except (zmq.ZMQError, zmq.Again) as exc:
            log.warning("control message to engine %s failed: %s", engine_id, exc)
            return False

    async def receive(self, on_hello: Callable[[int, dict[str, Any]], None]) -> None:
        while True:
            identity, raw = await self.sock.recv_multipart()
            try:
                msg = json.loads(raw)
                engine_id = int(identity)
            except ValueError:
                continue
            if msg.get("op") == "hello":
                on_hello(engine_id, msg)

    def close(self) -> None:
        self.sock.close(linger=0)
