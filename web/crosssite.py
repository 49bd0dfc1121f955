"""Requests a browser page of another site could send: refused before any route runs (pure ASGI middleware).

- A request with a body must declare it JSON (``Content-Type: application/json`` or ``application/*+json``): a page
  may send a "simple" cross-site POST (``text/plain``, a form, or no type at all) without a CORS preflight, so such a
  body is never read as JSON: 415, naming the type expected. Every route with a body takes JSON.
- A request other than GET, HEAD or OPTIONS that carries an ``Origin`` must come from this server's own origin (the
  ``Host`` it was sent to, or the ``X-Forwarded-Host`` of a proxy) or from one of ``allowed_origins`` (``*``: any):
  403 otherwise. Clients outside a browser
  send no ``Origin`` and are not concerned; a browser always sends one with such a request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from email.message import Message as MimeHeader
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from llmsup.web.errors import error_body

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_json_type(value: str | None) -> bool:
    if not value:
        return False
    header = MimeHeader()
    header["content-type"] = value
    subtype = header.get_content_subtype()
    return header.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _header(scope: Scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == name), None)


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return _header(scope, b"transfer-encoding") is not None


class CrossSiteGuard:
    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        origins = {o.rstrip("/").lower() for o in allowed_origins}
        self.any_origin = "*" in origins
        self.origins = origins

    def foreign(self, scope: Scope, origin: str) -> bool:
        if self.any_origin or origin.rstrip("/").lower() in self.origins:
            return False
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return True
        # this server as the browser reached it: the Host header, or the one a proxy forwards (a page of another
        # site cannot set X-Forwarded-Host without a CORS preflight, which it would not pass)
        names = {(_header(scope, b"host") or "").lower(), (_header(scope, b"x-forwarded-host") or "").lower()}
        return parts.netloc.lower() not in names - {""}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is not None and self.foreign(scope, origin):
            await _refuse(scope, send, 403, f"cross-site request refused: Origin {origin[:200]!r} is neither this "
                          "server nor one of allowed_origins")
            return
        if _has_body(scope) and not is_json_type(_header(scope, b"content-type")):
            got = _header(scope, b"content-type")
            await _refuse(scope, send, 415, "the request body must be JSON (Content-Type: application/json); got "
                          + (repr(got[:100]) if got else "no Content-Type"))
            return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    body = json.dumps(error_body(scope["path"], status, message)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
    ]})
    await send({"type": "http.response.body", "body": body})
