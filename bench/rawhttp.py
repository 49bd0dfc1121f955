"""A lean HTTP/1.1 keep-alive client for the throughput benchmarks: asyncio protocols and httptools' parser.

httpx spends ~8 ms of CPU per request-response pair of the closed loop here (2-core machine, 2026-12-05): on the
same cores as the server, the load generator was the largest consumer of CPU in the run, and it capped the rate
it measured. This client does what the load needs and nothing more (one request at a time per connection, a
pool of at most ``connections``, JSON bodies, ``Content-Length`` or chunked answers) at a fraction of that; the
benchmark reports its CPU per job beside the server's. It answers the subset of httpx's API the load uses:
``post(path, json=)``, ``get(path, params=)``, responses with ``status_code``, ``text`` and ``json()``.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any
from urllib.parse import urlencode, urlsplit

import httptools


class RawResponse:
    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.waiter: asyncio.Future[RawResponse] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionError("connection closed by the server"))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(RawResponse(self.parser.get_status_code(), b"".join(self.body)))
        self.body = []
        if not self.parser.should_keep_alive():
            self.closed = True

    async def request(self, head: bytes, body: bytes) -> RawResponse:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)
        try:
            return await self.waiter
        finally:
            self.waiter = None


class RawClient:
    """A pool of at most ``connections`` keep-alive connections to ``url`` (http only)."""

    def __init__(self, url: str, connections: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.host_header = f"{self.host}:{self.port}".encode()
        self.limit = connections
        self.idle: deque[_Connection] = deque()
        self.opened = 0
        self.free = asyncio.Semaphore(connections)

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        while self.idle:
            conn = self.idle.popleft()
            if conn.transport is not None:
                conn.transport.close()

    async def _connection(self) -> _Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        _, conn = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
        return conn

    async def _send(self, method: bytes, path: str, body: bytes) -> RawResponse:
        head = (method + b" " + path.encode() + b" HTTP/1.1\r\nHost: " + self.host_header +
                b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        async with self.free:
            for attempt in (0, 1):  # a kept-alive connection the server closed under us: once more, on a new one
                conn = await self._connection()
                try:
                    resp = await conn.request(head, body)
                except (ConnectionError, httptools.HttpParserError):
                    if conn.transport is not None:
                        conn.transport.close()
                    if attempt:
                        raise
                    continue
                if conn.closed:
                    if conn.transport is not None:
                        conn.transport.close()
                else:
                    self.idle.append(conn)
                return resp
        raise AssertionError("unreachable")

    async def post(self, path: str, json: Any = None) -> RawResponse:  # noqa: A002 (httpx's name)
        return await self._send(b"POST", path, _dumps(json))

    async def get(self, path: str, params: dict[str, Any] | None = None) -> RawResponse:
        return await self._send(b"GET", path + ("?" + urlencode(params) if params else ""), b"")


def _dumps(value: Any) -> bytes:
    return b"" if value is None else json.dumps(value, separators=(",", ":")).encode()
