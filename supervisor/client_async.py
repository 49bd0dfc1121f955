"""The asyncio twin of :mod:`supervisor.client`: submit, wait, stream without blocking the loop.

    async with AsyncClient() as client:
        job = await client.submit("Hello", deadline_s=5)
        async for piece in job.stream():
            print(piece, end="")
        await client.wait_all([await client.submit(p) for p in prompts])

``AsyncJobHandle.status`` / ``.output`` read the last snapshot; ``await job.refresh()`` fetches a new one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Self

import httpx
from llmsup.supervisor.client_base import (
    TERMINAL,
    Endpoint,
    JobFailed,
    JobTimeout,
    SSEParser,
    TextTracker,
    apply_event,
    checked,
    is_event_stream,
    submit_body,
)


class AsyncJobHandle:
    def __init__(self, client: AsyncClient, data: dict[str, Any]) -> None:
        self.client = client
        self.data = data

    id = property(lambda self: self.data["id"])
    status = property(lambda self: self.data["status"])
    output = property(lambda self: self.data["output"])
    tokens = property(lambda self: self.data["tokens"])
    error = property(lambda self: self.data["error"])
    done = property(lambda self: self.data["status"] in TERMINAL)

    async def refresh(self) -> AsyncJobHandle:
        self.data = await self.client._request("GET", f"/v1/jobs/{self.id}")
        return self

    async def wait(self, timeout: float | None = None, check: bool = False) -> AsyncJobHandle:
        end = None if timeout is None else time.monotonic() + timeout
        pause = 0.02
        while not (await self.refresh()).done:
            if end is not None and time.monotonic() >= end:
                raise JobTimeout(f"job {self.id} still {self.status} after {timeout}s")
            await asyncio.sleep(pause if end is None else max(0.0, min(pause, end - time.monotonic())))
            pause = min(0.25, pause * 1.5)
        if check and self.status != "succeeded":
            raise JobFailed(f"job {self.id} ended {self.status}: {self.error}", self.data)
        return self

    async def cancel(self) -> AsyncJobHandle:
        self.data = await self.client._request("POST", f"/v1/jobs/{self.id}/cancel")
        return self

    async def stream(self, timeout: float | None = None, poll_interval: float = 0.1) -> AsyncIterator[str]:
        """Text pieces as they are generated, until the job ends (see ``JobHandle.stream``)."""
        end = None if timeout is None else time.monotonic() + timeout
        tracker = TextTracker()
        if not self.done and self.client._sse is not False:
            async for piece in self._stream_sse(tracker, end):
                yield piece
        while True:
            if not self.done:
                await self.refresh()
            piece = tracker.from_job(self.data)
            if piece:
                yield piece
            if self.done:
                return
            if end is not None and time.monotonic() >= end:
                raise JobTimeout(f"job {self.id} still {self.status} after {timeout}s")
            await asyncio.sleep(poll_interval)

    async def _stream_sse(self, tracker: TextTracker, end: float | None) -> AsyncIterator[str]:
        c, path = self.client, f"/v1/jobs/{self.id}/events"
        while end is None or time.monotonic() < end:
            read = 30.0 if end is None else max(0.1, min(30.0, end - time.monotonic()))
            try:
                async with c._http.stream("GET", path,
                                          headers={"Accept": "text/event-stream", **c.endpoint.headers(path)},
                                          timeout=httpx.Timeout(c.timeout, read=read)) as resp:
                    if not is_event_stream(resp):
                        if resp.status_code in (404, 405):
                            await self.refresh()  # NotFound if the job is missing; else no event route
                            c._sse = False
                        return
                    c._sse = True
                    parser = SSEParser()
                    async for line in resp.aiter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        piece, job, over = apply_event(tracker, event)
                        if job is not None:
                            self.data = job
                        if piece is None:
                            piece = tracker.from_job((await self.refresh()).data)
                        if piece:
                            yield piece
                        if over or self.done or (end is not None and time.monotonic() >= end):
                            return
                    return
            except httpx.ReadTimeout:
                piece = tracker.from_job((await self.refresh()).data)
                if piece:
                    yield piece
                if self.done:
                    return
            except httpx.TransportError:
                return

    def __repr__(self) -> str:
        return f"<AsyncJobHandle {self.id} {self.status} tokens={self.data.get('tokens', 0)}>"


class AsyncClient:
    """Asynchronous client (httpx.AsyncClient); finds the server like :class:`supervisor.client.Client`."""

    def __init__(self, url: str | None = None, run_dir: Path | str | None = None, admin_token: str | None = None,
                 timeout: float = 30.0, api_key: str | None = None) -> None:
        self.endpoint = Endpoint.resolve(url, run_dir, admin_token, api_key)
        self.timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.endpoint.url, timeout=timeout)
        self._sse: bool | None = None

    @property
    def url(self) -> str:
        return self.endpoint.url

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = await self._http.request(method, path, headers=self.endpoint.headers(path), **kwargs)
        except httpx.TransportError as exc:
            raise self.endpoint.unreachable(exc) from exc
        return checked(resp)

    async def submit(self, prompt: str, *, deadline_s: float | None = None, max_tokens: int | None = None,
                     priority: int | None = None, idempotency_key: str | None = None,
                     temperature: float | None = None, stop: list[str] | None = None,
                     queue_timeout_s: float | None = None, **extra: Any) -> AsyncJobHandle:
        body = submit_body(prompt, deadline_s=deadline_s, max_tokens=max_tokens, priority=priority,
                           idempotency_key=idempotency_key, temperature=temperature, stop=stop,
                           queue_timeout_s=queue_timeout_s, **extra)
        return AsyncJobHandle(self, await self._request("POST", "/v1/jobs", json=body))

    async def job(self, job_id: str) -> AsyncJobHandle:
        return AsyncJobHandle(self, await self._request("GET", f"/v1/jobs/{job_id}"))

    async def jobs(self, status: str | list[str] | None = None, limit: int = 100) -> list[AsyncJobHandle]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = [status] if isinstance(status, str) else list(status)
        return [AsyncJobHandle(self, j) for j in (await self._request("GET", "/v1/jobs", params=params))["jobs"]]

    async def cancel(self, job_id: str) -> AsyncJobHandle:
        return AsyncJobHandle(self, await self._request("POST", f"/v1/jobs/{job_id}/cancel"))

    async def kill(self, job_id: str) -> AsyncJobHandle:
        return AsyncJobHandle(self, await self._request("POST", f"/admin/jobs/{job_id}/kill"))

    async def engines(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/admin/engines"))["engines"]

    async def wait_all(self, handles: Iterable[AsyncJobHandle], timeout: float | None = None) -> list[AsyncJobHandle]:
        handles = list(handles)
        try:
            await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), timeout)
        except TimeoutError:
            left = sum(1 for h in handles if not h.done)
            raise JobTimeout(f"{left} of {len(handles)} jobs not ended after {timeout}s") from None
        return handles

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
