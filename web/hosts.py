"""Host header allowlist: a page on ``evil.example`` whose name a DNS rebinding attack points at 127.0.0.1
must not reach the API from the victim's browser (which sends ``Host: evil.example``).

Accepted by default: the localhost names and loopback addresses, the address the server is bound to and, for
a wildcard bind (``0.0.0.0`` / ``::``), this machine's host name and interface addresses. ``allowed_hosts``
adds names (``*`` accepts any Host). Anything else gets 400 on every route, before the app sees it. A
request without a Host header (HTTP/1.0) is let through: browsers always send one.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections.abc import Iterable

import psutil
from starlette.types import ASGIApp, Receive, Scope, Send

from llmsup.supervisor.settings import Settings
from llmsup.web.errors import error_body

LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")


def host_name(header: str) -> str:
    """``Host`` header value -> the bare lower-case name (port, brackets and a final dot removed)."""
    value = header.strip().lower()
    if value.startswith("["):  # [v6]:port
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _is_loopback_address(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_wildcard(bind: str) -> bool:
    return bind.strip("[]") in WILDCARD_BINDS


def interface_addresses() -> set[str]:
    return {addr.address.split("%")[0].lower() for addrs in psutil.net_if_addrs().values() for addr in addrs
            if addr.family in (socket.AF_INET, socket.AF_INET6)}


def default_hosts(bind: str) -> set[str]:
    names = set(LOCAL_NAMES)
    if not is_wildcard(bind):
        names.add(bind.strip("[]").lower())
        return names
    names.update({socket.gethostname().lower(), socket.getfqdn().lower()})
    return names | interface_addresses()


def allowed_hosts(settings: Settings) -> set[str]:
    return default_hosts(settings.host) | set(settings.allowed_hosts)


class HostAllowlist:
    """Pure ASGI middleware: 400 for a Host header not in the allowlist (HTTP and WebSocket).

    ``wildcard_bind``: the server listens on every interface, so an address of an interface that appeared
    after the start is accepted too (interfaces are read again on such a miss, at most once a second).
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str], wildcard_bind: bool = False) -> None:
        self.app = app
        self.allowed = {host_name(name) for name in allowed}
        self.any = "*" in self.allowed
        self.wildcard_bind = wildcard_bind
        self._interfaces_read = time.monotonic()

    def accepts(self, header: str | None) -> bool:
        if self.any or header is None:
            return True
        name = host_name(header)
        if name in self.allowed or _is_loopback_address(name):
            return True
        if self.wildcard_bind and _is_address(name) and time.monotonic() - self._interfaces_read >= 1.0:
            self._interfaces_read = time.monotonic()
            self.allowed |= interface_addresses()
            return name in self.allowed
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
        if self.accepts(header):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        message = "unknown Host header: add the name to allowed_hosts (LLMSUP_ALLOWED_HOSTS) if it is this server"
        body = json.dumps(error_body(scope["path"], 400, message)).encode()
        await send({"type": "http.response.start", "status": 400, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        ]})
        await send({"type": "http.response.body", "body": body})
