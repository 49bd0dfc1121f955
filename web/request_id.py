"""``X-Request-Id`` on every answer (vLLM's ``--enable-request-id-headers``): the request's own id when it sent one,
else a new one. A pure ASGI middleware: streamed answers keep streaming."""

from __future__ import annotations

import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
MAX_CHARS = 200  # a longer id the client sent is replaced by one of ours


class RequestIdHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v for k, v in scope.get("headers", ()) if k == HEADER), b"")
        request_id = sent if 0 < len(sent) <= MAX_CHARS and sent.isascii() else uuid.uuid4().hex.encode()

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, request_id)]}
            await send(message)

        await self.app(scope, receive, with_id)
