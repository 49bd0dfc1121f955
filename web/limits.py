"""Request body size limit: a pure ASGI middleware (413 before the app sees an oversized body).

A declared ``Content-Length`` above the limit is refused at once. Otherwise the body is read (counting the
bytes as they stream in, so a chunked upload cannot get past the limit either) and replayed to the app, which
keeps working on a body of known, bounded size.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from llmsup.web.errors import error_body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away before sending its body
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(scope, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        message = f"request body larger than {self.max_bytes} bytes"
        body = json.dumps(error_body(scope["path"], 413, message)).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def check_job_limits(settings: Any, prompt: str, max_tokens: int | None, deadline_s: float | None) -> None:
    """The limits the served OpenAPI spec states (web/openapi.py), checked before the supervisor sees the
    request, so that no path (an idempotent replay included) accepts what the spec says is invalid."""
    from llmsup.supervisor.requests import InvalidRequest

    if len(prompt) > settings.max_prompt_chars:
        raise InvalidRequest(f"prompt longer than {settings.max_prompt_chars} characters")
    if max_tokens is not None and not 1 <= max_tokens <= settings.max_tokens_limit:
        raise InvalidRequest(f"max_tokens must be in [1, {settings.max_tokens_limit}]")
    if deadline_s is not None and not 0 < deadline_s <= settings.max_deadline_s:
        raise InvalidRequest(f"deadline_s must be in (0, {settings.max_deadline_s}]")
