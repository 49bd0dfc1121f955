"""Server-Sent Events: wire format and a response that never outlives its client.

:class:`EventStream` listens for the client's disconnect *while* it streams (Starlette's own streaming
response notices a gone client only when a write fails, which never happens while a job is silent), cancels
the producer at once, and then calls ``on_close(completed)`` so the caller can cancel work nobody wants.
``release`` (a stream slot taken by the route, ``web/limits.py: StreamSlots``) is given back however the
stream ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger("llmsup.web.sse")
PING = b": ping\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_response(description: str, events: list[str] | None = None, json_data: bool = True) -> dict[str, Any]:
    """OpenAPI (3.1) ``responses`` entry of an SSE stream: ``schema`` describes one event."""
    data: dict[str, Any] = {"type": "string"}
    if json_data:
        data["contentMediaType"] = "application/json"
    event: dict[str, Any] = {"type": "string"}
    if events:
        event["enum"] = events
    schema = {"type": "object", "required": ["data"], "properties": {
        "event": event, "data": data, "id": {"type": "string"}, "retry": {"type": "integer"},
    }}
    return {"description": description, "content": {"text/event-stream": {"schema": schema}}}


def event(data: Any, name: str | None = None, event_id: str | int | None = None) -> bytes:
    """One SSE message; ``data`` is sent as compact JSON unless it is already a string."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    lines = []
    if name:
        lines.append(f"event: {name}")
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in text.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        on_close: Callable[[bool], Any] | None = None,
        headers: dict[str, str] | None = None,
        gauge: Any = None,
        status_code: int = 200,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.chunks = chunks
        self.on_close = on_close
        self.gauge = gauge
        self.release = release
        self.status_code = status_code
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._stream(send, receive)
        finally:
            if self.release is not None:
                self.release()

    async def _stream(self, send: Send, receive: Receive) -> None:
        completed = False

        async def produce() -> None:
            nonlocal completed
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            completed = True

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        if self.gauge is not None:
            self.gauge.inc()
        producer = asyncio.ensure_future(produce())
        listener = asyncio.ensure_future(listen())
        try:
            await asyncio.wait({producer, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            listener.cancel()
            while not producer.done():  # insist: a cancel can be swallowed by code below us
                producer.cancel()
                await asyncio.wait({producer}, timeout=0.5)
            await asyncio.gather(producer, listener, return_exceptions=True)
            await self._closed(completed)
        if producer.done() and not producer.cancelled() and producer.exception() is not None:
            raise producer.exception()  # type: ignore[misc]

    async def _closed(self, completed: bool) -> None:
        """The stream ended (``completed``: the generator ran out): close the generator, count it, tell the owner."""
        aclose = getattr(self.chunks, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:  # noqa: BLE001 - closing a broken generator must not mask the cause
                log.debug("closing an event generator failed", exc_info=True)
        if self.gauge is not None:
            self.gauge.dec()
        if self.on_close is not None:
            try:
                self.on_close(completed)
            except Exception:  # noqa: BLE001
                log.exception("on_close of an event stream failed")
