"""Limits on what one request, or one caller, may take.

- Body size: a pure ASGI middleware (413 before the app sees an oversized body). A declared
  ``Content-Length`` above the limit is refused at once. Otherwise the body is read (counting the bytes as they
  stream in, so a chunked upload cannot get past the limit either) and replayed to the app, which keeps
  working on a body of known, bounded size.
- Job fields the spec bounds by settings (:func:`check_job_limits`), the priority ceiling of callers without
  the admin token (:func:`check_priority`, 403), open event streams per owner and in all (:class:`StreamSlots`,
  429). The queued jobs per owner are counted by the supervisor (``owner_queue_max``, 429).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmsup.supervisor.core.requests import InvalidRequest, check_limits
from llmsup.supervisor.settings import Settings
from llmsup.web.errors import PriorityTooHigh, TooManyStreams, error_body


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


def check_job_limits(settings: Settings, prompt: str, max_tokens: int | None, deadline_s: float | None,
                     min_tokens: int | None = None) -> None:
    """The limits the served OpenAPI spec states (web/openapi.py; checked by the supervisor's ``check_limits``),
    before anything is submitted: every job of a request passes, or none is queued."""
    effective_max, _ = check_limits(settings, prompt, max_tokens, deadline_s)
    if min_tokens is not None and min_tokens > effective_max:
        given = "max_tokens" if max_tokens is not None else "the default max_tokens"
        raise InvalidRequest(f"min_tokens ({min_tokens}) must not exceed {given} ({effective_max})")


def check_priority(settings: Settings, priority: int, admin: bool, vllm_scale: bool = False) -> None:
    """Refuse (403, not clamped: the caller learns at once why) a priority above the ceiling for callers
    without the admin token. ``vllm_scale``: the OpenAI routes' priority, where lower runs first."""
    ceiling = settings.max_user_priority
    if admin or priority <= ceiling:
        return
    if vllm_scale:
        raise PriorityTooHigh(f"priority below {-ceiling} needs the admin token (max_user_priority={ceiling})")
    raise PriorityTooHigh(f"priority above {ceiling} needs the admin token (max_user_priority={ceiling})")


class StreamSlots:
    """Open Server-Sent Event streams, counted per owner and in all. Each stream takes a slot when its route
    answers and gives it back when the stream ends (``EventStream``), so a client that opens streams and
    never reads them holds at most ``per_owner`` subscriptions. The admin has no per-owner limit."""

    def __init__(self, per_owner: int, total: int) -> None:
        self.per_owner = per_owner
        self.total = total
        self.open: dict[str, int] = {}

    @property
    def in_use(self) -> int:
        return sum(self.open.values())

    def acquire(self, owner: str | None, admin: bool = False) -> Callable[[], None]:
        """Take a slot (raises TooManyStreams); returns the function that gives it back (idempotent)."""
        if self.in_use >= self.total:
            raise TooManyStreams(f"{self.total} event streams open on this server (sse_max_total); retry later")
        key = "<admin>" if admin else (owner if owner is not None else "<anonymous>")  # no owner name has "<"
        if not admin and self.open.get(key, 0) >= self.per_owner:
            raise TooManyStreams(f"{self.per_owner} event streams already open for this caller (sse_max_per_owner)")
        self.open[key] = self.open.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.open[key] -= 1
            if not self.open[key]:
                del self.open[key]

        return release
