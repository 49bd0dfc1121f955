"""The client core, asynchronous: every request the clients make, and every wait, stream and bar, is here.

    async with AsyncClient() as client:
        job = await client.submit("Hello", deadline_s=5)
        async for piece in job.stream():
            print(piece, end="")
        await client.wait_all([await client.submit(p) for p in prompts])

The sync :class:`llmsup.supervisor.client.Client` runs this very code on a private loop thread.
``AsyncJobHandle.status`` / ``.output`` read the last snapshot; ``await job.refresh()`` fetches a new one.
Waits are server long-polls (``GET /v1/jobs/{id}?wait_s=``), streams the job's event stream (SSE).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Self, Unpack
from urllib.parse import quote

import httpx

from llmsup.supervisor.client import notebook as notebook_cluster
from llmsup.supervisor.client.base import (
    PIPELINE_POLL_S,
    WAIT_STEP_S,
    AtEndpoint,
    Deadline,
    Endpoint,
    JobFields,
    SubmitParams,
    submit_body,
)
from llmsup.supervisor.client.errors import JobFailed, JobTimeout, ServerUnreachable, checked
from llmsup.supervisor.client.events import SSEParser, TextTracker, apply_event, is_event_stream
from llmsup.supervisor.client.progress import BatchBar, JobBar, PipelineBar, job_updates, watch_batch

ENGINE_POLL_S = 0.05  # engines and readiness have no long-poll route: read again this often while waiting


def job_path(job_id: str, action: str = "", admin: bool = False) -> str:
    """A job's route; the id is one path segment whatever it holds (a ``/`` in it cannot reach another route)."""
    path = f"{'/admin' if admin else '/v1'}/jobs/{quote(job_id, safe='')}"
    return f"{path}/{action}" if action else path


class AsyncJobHandle(JobFields):
    """A submitted job; its fields read the latest snapshot (``data``, the job's JSON)."""

    def __init__(self, client: AsyncClient, data: dict[str, Any]) -> None:
        self.client = client
        self.data = data

    async def refresh(self, wait_s: float = 0.0) -> Self:
        """Fetch the job again; with ``wait_s``, the server answers when the job ends or after ``wait_s``."""
        self.data = await self.client.job_data(self.id, wait_s)
        return self

    async def wait(self, timeout: float | None = None, check: bool = False) -> Self:
        """Until the job ends (``JobTimeout`` after ``timeout`` s); ``check``: ``JobFailed`` unless it succeeded."""
        end = Deadline.after(timeout)
        while not self.done:
            await self.refresh(wait_s=end.step(WAIT_STEP_S))
            if not self.done and end.passed():
                raise JobTimeout(f"job {self.id} still {self.status} after {timeout}s")
        if check and self.status != "succeeded":
            raise JobFailed(f"job {self.id} ended {self.status}: {self.error}", self.data)
        return self

    async def cancel(self) -> Self:
        """Cancel: a queued job ends at once; a running one is interrupted (its partial output is kept)."""
        self.data = (await self.client.cancel(self.id)).data
        return self

    async def kill(self) -> Self:
        """Admin kill (needs the admin token)."""
        self.data = (await self.client.kill(self.id)).data
        return self

    async def stream(self, timeout: float | None = None, poll_interval: float = 0.1) -> AsyncIterator[str]:
        """The job's text piece by piece as it is generated, until the job ends.

        Uses the server's event stream (``GET /v1/jobs/{id}/events``) where it has one, else long-polls of
        ``poll_interval``. The pieces add up to the final output; a retried job's new attempt is handed out only
        past what was already given when it repeats it (see ``TextTracker``). ``JobTimeout`` after ``timeout`` s.
        """
        end = Deadline.after(timeout)
        tracker = TextTracker()
        if not self.done and self.client._sse is not False:
            async for piece in self._stream_events(tracker, end):
                yield piece
        wait_s = 0.0  # the last word after the event stream at once; without one, a long-poll per round
        while True:
            if not self.done:
                await self.refresh(wait_s=end.step(wait_s))
            piece = tracker.from_job(self.data)
            if piece:
                yield piece
            if self.done:
                return
            if end.passed():
                raise JobTimeout(f"job {self.id} still {self.status} after {timeout}s")
            wait_s = poll_interval

    async def _stream_events(self, tracker: TextTracker, end: Deadline) -> AsyncIterator[str]:  # noqa: C901 - one SSE reconnect loop with its fallbacks in one place
        c, path = self.client, job_path(self.id, "events")
        while not end.passed():
            try:
                async with c._http.stream("GET", path, headers={"Accept": "text/event-stream", **c.endpoint.headers(path)},
                                          timeout=httpx.Timeout(c.timeout, read=max(0.1, end.step(30.0)))) as resp:
                    if not is_event_stream(resp):
                        if resp.status_code in (404, 405):
                            await self.refresh()  # NotFound if the job is missing; else no event route: poll
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
                        if piece is None:  # missed tokens: catch up from a snapshot
                            piece = tracker.from_job((await self.refresh()).data)
                        if piece:
                            yield piece
                        if over or self.done or end.passed():
                            return
                    return  # closed without its end: the long-polls finish
            except httpx.ReadTimeout:
                piece = tracker.from_job((await self.refresh()).data)
                if piece:
                    yield piece
                if self.done:
                    return
            except httpx.TransportError:
                return  # the long-polls report an unreachable server

    async def progress(self, timeout: float | None = None, interval: float = 0.2, show: bool = True) -> Self:
        """Show a live progress bar (tokens so far, time left before the deadline) until the job ends."""
        with JobBar(self.data, show) as bar:
            async for job in job_updates(self, timeout, interval):
                bar.update(job)
        return self


class AsyncClient(AtEndpoint):
    """Asynchronous client. ``url`` / ``run_dir`` / ``admin_token`` / ``api_key`` default to the environment
    (``LLMSUP_URL``, else ``<LLMSUP_RUN_DIR or ./.llmsup>/server.json``); ``transport``: an httpx transport
    (e.g. ``httpx.MockTransport`` in tests)."""

    def __init__(self, url: str | None = None, run_dir: Path | str | None = None, admin_token: str | None = None,
                 timeout: float = 30.0, api_key: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.endpoint = Endpoint.resolve(url, run_dir, admin_token, api_key)
        self.timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.endpoint.url, timeout=timeout, transport=transport)
        self._sse: bool | None = None  # whether the server has the event stream (None: not tried yet)

    async def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                       json: Any = None, read_s: float | None = None) -> Any:
        """One call: the credential that route takes, the server's error raised as an ``LlmsupError``."""
        timeout = httpx.Timeout(self.timeout, read=read_s) if read_s else httpx.USE_CLIENT_DEFAULT
        try:
            resp = await self._http.request(method, path, params=params, json=json, timeout=timeout,
                                            headers=self.endpoint.headers(path))
        except httpx.TransportError as exc:
            raise self.endpoint.unreachable(exc) from exc
        return checked(resp)

    # jobs --------------------------------------------------------------------------
    async def submit(self, prompt: str, **params: Unpack[SubmitParams]) -> AsyncJobHandle:
        """Submit a prompt; returns at once with the queued job."""
        return AsyncJobHandle(self, await self._request("POST", "/v1/jobs", json=submit_body(prompt, **params)))

    async def submit_many(self, prompts: Iterable[str], **params: Unpack[SubmitParams]) -> list[AsyncJobHandle]:
        return [await self.submit(p, **params) for p in prompts]

    async def job_data(self, job_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        """The job's JSON; with ``wait_s`` (a long-poll) once it has ended, or after ``wait_s``."""
        if wait_s <= 0:
            return await self._request("GET", job_path(job_id))
        return await self._request("GET", job_path(job_id), params={"wait_s": round(wait_s, 3)},
                                   read_s=wait_s + self.timeout)

    async def job(self, job_id: str) -> AsyncJobHandle:
        return AsyncJobHandle(self, await self.job_data(job_id))

    async def jobs(self, status: str | list[str] | None = None, limit: int = 100) -> list[AsyncJobHandle]:
        """Jobs newest first, optionally only those in ``status`` (one or a list)."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = [status] if isinstance(status, str) else list(status)
        return [AsyncJobHandle(self, j) for j in (await self._request("GET", "/v1/jobs", params=params))["jobs"]]

    async def cancel(self, job_id: str) -> AsyncJobHandle:
        return AsyncJobHandle(self, await self._request("POST", job_path(job_id, "cancel")))

    async def wait_all(self, handles: Iterable[AsyncJobHandle], timeout: float | None = None, progress: bool = True,
                       interval: float = 0.25) -> list[AsyncJobHandle]:
        """Until every job has ended; with ``progress``, one live bar for the batch. ``JobTimeout`` on timeout."""
        handles = list(handles)
        with BatchBar(len(handles), progress) as bar:
            async for jobs in watch_batch(handles, timeout, progress, interval):
                bar.update(jobs)
        return handles

    # pipelines -----------------------------------------------------------------------
    async def pipeline(self, steps: list[dict[str, Any]], deadline_s: float | None = None, priority: int = 0,
                       idempotency_key: str | None = None) -> dict[str, Any]:
        """Queue a pipeline (``POST /v1/pipelines``): each step a dict of ``name``, ``prompt`` (``{{a}}``: step a's
        output; ``{{item}}``: a map's item), ``after``, ``map``, ``affinity``, ``max_tokens``, ``deadline_s``..."""
        body: dict[str, Any] = {"steps": steps, "priority": priority}
        if deadline_s is not None:
            body["deadline_s"] = deadline_s
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return await self._request("POST", "/v1/pipelines", json=body)

    async def pipeline_data(self, pipeline_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        """The pipeline's JSON; with ``wait_s`` (a long-poll) once it changes or ends, or after ``wait_s``."""
        params = {"wait_s": round(wait_s, 3)} if wait_s > 0 else None
        return await self._request("GET", f"/v1/pipelines/{pipeline_id}", params=params, read_s=wait_s + self.timeout)

    async def wait_pipeline(self, pipeline_id: str, timeout: float | None = None,
                            progress: bool = True) -> dict[str, Any]:
        """Until the pipeline ends; with ``progress``, a live bar of its steps. ``JobTimeout`` on timeout."""
        deadline = Deadline.after(timeout)
        data = await self.pipeline_data(pipeline_id)
        with PipelineBar(data, progress) as bar:
            while data["status"] in ("queued", "running"):
                if deadline.passed():
                    raise JobTimeout(f"pipeline {pipeline_id} still {data['status']} after {timeout}s")
                data = await self.pipeline_data(pipeline_id, deadline.step(PIPELINE_POLL_S))
                bar.update(data)
        return data

    async def cancel_pipeline(self, pipeline_id: str) -> dict[str, Any]:
        return await self._request("POST", f"/v1/pipelines/{pipeline_id}/cancel")

    # admin ---------------------------------------------------------------------------
    async def kill(self, job_id: str) -> AsyncJobHandle:
        """Admin kill: a queued job ends at once; a running one is interrupted, then escalated."""
        return AsyncJobHandle(self, await self._request("POST", job_path(job_id, "kill", admin=True)))

    async def engine_list(self) -> dict[str, Any]:
        """``GET /admin/engines`` whole: ``engines`` and the engine sets still ``starting``."""
        return await self._request("GET", "/admin/engines")

    async def engines(self) -> list[dict[str, Any]]:
        """The supervisor's engines: id, host, pid, gpu, state, job_id, backend, model, rss_mb, ..."""
        return (await self.engine_list())["engines"]

    async def hosts(self) -> list[dict[str, Any]]:
        """``GET /admin/hosts``: every host with its engines, the server's own first."""
        return (await self._request("GET", "/admin/hosts"))["hosts"]

    async def revoke_host(self, host: str) -> dict[str, Any]:
        """Revoke a host (its name or host_key): its engines leave, its join agent stops, its keys are revoked."""
        return await self._request("POST", f"/admin/hosts/{quote(host, safe='')}/revoke")

    async def interrupt_engine(self, engine_id: int) -> list[str]:
        return (await self._request("POST", f"/admin/engines/{engine_id}/interrupt"))["jobs"]

    async def drain_engine(self, engine_id: int, undo: bool = False) -> dict[str, Any]:
        """Stop (``undo``: resume) dispatching jobs to an engine; its running job finishes."""
        return await self._request("POST", f"/admin/engines/{engine_id}/drain",
                                   params={"undo": "true"} if undo else None)

    async def undrain_engine(self, engine_id: int) -> dict[str, Any]:
        """Dispatch jobs to a drained engine again."""
        return await self.drain_engine(engine_id, undo=True)

    async def restart_engine(self, engine_id: int, wait: bool = True, timeout: float = 60.0) -> dict[str, Any]:
        """Replace an engine (a running job on it is killed). With ``wait``: the replacement's engine dict."""
        before = {e["id"] for e in await self.engines()}
        answer = await self._request("POST", f"/admin/engines/{engine_id}/restart")
        if not wait:
            return answer
        end = Deadline.after(timeout)
        while True:
            engines = await self.engines()
            new = [e for e in engines if e["id"] not in before and e["state"] in ("idle", "busy")]
            if new and engine_id not in {e["id"] for e in engines}:
                return new[0]
            if end.passed():
                raise JobTimeout(f"engine {engine_id} not replaced after {timeout}s: {engines}")
            await asyncio.sleep(ENGINE_POLL_S)

    # health --------------------------------------------------------------------------
    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def wait_ready(self, timeout: float = 60.0) -> Self:
        end = Deadline.after(timeout)
        while not await self.ready():
            if end.passed():
                raise ServerUnreachable(f"llmsup at {self.url} (from {self.endpoint.source}) not ready after {timeout}s")
            await asyncio.sleep(ENGINE_POLL_S)
        return self

    # the cluster itself ----------------------------------------------------------------
    def cluster(self, **kwargs: Any) -> Any:
        """An ``ipyparallel.Client`` on the server's cluster (from the run directory); see ``notebook_cluster``."""
        return notebook_cluster.connect_cluster(self.run_dir, **kwargs)

    async def sync_cluster(self, rc: Any, timeout: float = 30.0) -> list[int]:
        """Wait until ``rc`` (from :meth:`cluster`) sees the engines the supervisor lists (e.g. after a restart)."""
        return await notebook_cluster.sync_cluster(self, rc, timeout)

    def borrow_engine(self, engine_id: int | None = None, timeout: float = 60.0, rc: Any = None,
                      release_timeout: float = 30.0) -> AbstractAsyncContextManager[Any]:
        """``async with``: one engine out of the supervisor's dispatch, as a DirectView (see ``notebook_cluster``)."""
        return notebook_cluster.borrow_engine(self, engine_id=engine_id, timeout=timeout, rc=rc,
                                              release_timeout=release_timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<llmsup {type(self).__name__} {self.url}>"
