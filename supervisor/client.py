"""Python client for a running ``llmsup serve``, for notebooks and scripts (REST only, so the server may be remote).

    from llmsup.supervisor.client import Client
    client = Client()                      # LLMSUP_URL, else <LLMSUP_RUN_DIR or ./.llmsup>/server.json
    job = client.submit("Hello", deadline_s=5, max_tokens=32)
    for piece in job.stream():             # text as it is generated (SSE, or polling where the server has none)
        print(piece, end="")
    job.wait(10).status                    # 'succeeded', 'timed_out' (partial output kept), ...
    client.wait_all([client.submit(p) for p in prompts])   # one live progress bar for the batch

Errors are :class:`LlmsupError` subclasses carrying the server's message and HTTP status
(``QueueFull.retry_after``, ``NotFound``, ``InvalidRequest``, ``AuthError``, ``ServerUnreachable``, ``JobTimeout``).

Joining the IPyParallel cluster itself (``client.cluster()``, then ``%px``) — what is safe:

- Reading engine state is safe: ``%px from llmsup.engines.runtime import identity; identity()`` (backend, model,
  GPU, pid, RSS). ``client.engines()`` gives the supervisor's view (state, job) without touching engines.
- An engine runs one task at a time, in order: ``%px`` on an engine busy with a job waits until that job ends.
- Never run work on an engine the supervisor thinks idle: a job dispatched meanwhile would wait behind it
  while its deadline runs, and the watchdog's SIGINT would hit your code. Borrow the engine instead:
  ``with client.borrow_engine() as view: view.apply_sync(f)`` drains it through the admin API, waits until
  its job is done, and hands it back (after your work on it has finished) on exit.
- Never signal engines from the notebook (``rc.send_signal``, ``%px`` interrupts), never ``rc.shutdown()``,
  ``rc.abort()`` or ``rc.clear()``: the supervisor interrupts only its own jobs and restarts engines itself
  (``client.restart_engine(id)``, ``client.kill(job_id)``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import httpx
from llmsup.supervisor.client_async import AsyncClient, AsyncJobHandle
from llmsup.supervisor.client_base import (
    TERMINAL,
    AuthError,
    BorrowError,
    Conflict,
    Endpoint,
    InvalidRequest,
    JobFailed,
    JobTimeout,
    LlmsupError,
    NotFound,
    QueueFull,
    ServerUnreachable,
    SSEParser,
    TextTracker,
    apply_event,
    checked,
    is_event_stream,
    submit_body,
)

__all__ = [
    "AsyncClient", "AsyncJobHandle", "AuthError", "BorrowError", "Client", "Conflict", "InvalidRequest", "JobFailed",
    "JobHandle", "JobTimeout", "LlmsupError", "NotFound", "QueueFull", "ServerUnreachable", "wait_all",
]


class JobHandle:
    """A submitted job. ``status``, ``output`` and ``tokens`` fetch the job again until it has ended."""

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        self.client = client
        self.data = data  # the latest snapshot (the job's JSON)

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def done(self) -> bool:
        """Whether the last snapshot is terminal (no request)."""
        return self.data["status"] in TERMINAL

    def _fresh(self) -> dict[str, Any]:
        return self.data if self.done else self.refresh().data

    @property
    def status(self) -> str:
        return self._fresh()["status"]

    @property
    def output(self) -> str:
        return self._fresh()["output"]

    @property
    def tokens(self) -> int:
        return self._fresh()["tokens"]

    @property
    def error(self) -> str | None:
        return self._fresh()["error"]

    @property
    def engine(self) -> dict[str, Any] | None:
        return self._fresh()["engine"]

    def refresh(self) -> JobHandle:
        self.data = self.client._request("GET", f"/v1/jobs/{self.id}")
        return self

    def wait(self, timeout: float | None = None, check: bool = False) -> JobHandle:
        """Block until the job ends (``JobTimeout`` after ``timeout`` s); ``check``: raise ``JobFailed`` unless it succeeded."""
        end = None if timeout is None else time.monotonic() + timeout
        pause = 0.02
        while not self.refresh().done:
            if end is not None and time.monotonic() >= end:
                raise JobTimeout(f"job {self.id} still {self.data['status']} after {timeout}s")
            time.sleep(pause if end is None else max(0.0, min(pause, end - time.monotonic())))
            pause = min(0.25, pause * 1.5)
        if check and self.data["status"] != "succeeded":
            raise JobFailed(f"job {self.id} ended {self.data['status']}: {self.data.get('error')}", self.data)
        return self

    def cancel(self) -> JobHandle:
        """Cancel: a queued job ends at once; a running one is interrupted (its partial output is kept)."""
        self.data = self.client._request("POST", f"/v1/jobs/{self.id}/cancel")
        return self

    def kill(self) -> JobHandle:
        """Admin kill (needs the admin token)."""
        self.data = self.client.kill(self.id).data
        return self

    def stream(self, timeout: float | None = None, poll_interval: float = 0.1) -> Iterator[str]:
        """Yield the job's text piece by piece as it is generated, until the job ends.

        Uses the server's event stream (``GET /v1/jobs/{id}/events``) where it has one, else polls the job.
        The pieces add up to the final output; a retried job's new attempt is handed out only past what was
        already given when it repeats it (see ``TextTracker``). ``JobTimeout`` after ``timeout`` seconds.
        """
        end = None if timeout is None else time.monotonic() + timeout
        tracker = TextTracker()
        if not self.done and self.client._sse is not False:
            yield from self._stream_sse(tracker, end)
        while True:  # polling; or the last word after the event stream
            if not self.done:
                self.refresh()
            piece = tracker.from_job(self.data)
            if piece:
                yield piece
            if self.done:
                return
            if end is not None and time.monotonic() >= end:
                raise JobTimeout(f"job {self.id} still {self.data['status']} after {timeout}s")
            time.sleep(poll_interval)

    def _stream_sse(self, tracker: TextTracker, end: float | None) -> Iterator[str]:
        c, path = self.client, f"/v1/jobs/{self.id}/events"
        while end is None or time.monotonic() < end:
            read = 30.0 if end is None else max(0.1, min(30.0, end - time.monotonic()))
            try:
                with c._http.stream("GET", path, headers={"Accept": "text/event-stream", **c.endpoint.headers(path)},
                                    timeout=httpx.Timeout(c.timeout, read=read)) as resp:
                    if not is_event_stream(resp):
                        if resp.status_code in (404, 405):
                            self.refresh()  # NotFound if the job is missing; else the route is: poll from now on
                            c._sse = False
                        return
                    c._sse = True
                    parser = SSEParser()
                    for line in resp.iter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        piece, job, over = apply_event(tracker, event)
                        if job is not None:
                            self.data = job
                        if piece is None:  # missed tokens: catch up from a snapshot
                            piece = tracker.from_job(self.refresh().data)
                        if piece:
                            yield piece
                        if over or self.done or (end is not None and time.monotonic() >= end):
                            return
                    return  # closed without its end: polling finishes
            except httpx.ReadTimeout:
                piece = tracker.from_job(self.refresh().data)
                if piece:
                    yield piece
                if self.done:
                    return
            except httpx.TransportError:
                return  # polling reports an unreachable server

    def progress(self, timeout: float | None = None, interval: float = 0.2) -> JobHandle:
        """Show a live progress bar (tokens so far, time left before the deadline) until the job ends."""
        from llmsup.supervisor.progress import job_progress

        return job_progress(self, timeout=timeout, interval=interval)

    def __repr__(self) -> str:
        d = self.data
        return f"<JobHandle {d['id']} {d['status']} tokens={d.get('tokens', 0)}>"


class Client:
    """Synchronous client (httpx). ``url`` / ``run_dir`` / ``admin_token`` default to the environment."""

    def __init__(self, url: str | None = None, run_dir: Path | str | None = None, admin_token: str | None = None,
                 timeout: float = 30.0, api_key: str | None = None) -> None:
        self.endpoint = Endpoint.resolve(url, run_dir, admin_token, api_key)
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.endpoint.url, timeout=timeout)
        self._sse: bool | None = None  # whether the server has the event stream (None: not tried yet)

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def run_dir(self) -> Path:
        return self.endpoint.run_dir

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, headers=self.endpoint.headers(path), **kwargs)
        except httpx.TransportError as exc:
            raise self.endpoint.unreachable(exc) from exc
        return checked(resp)

    # jobs --------------------------------------------------------------------------
    def submit(self, prompt: str, *, deadline_s: float | None = None, max_tokens: int | None = None,
               priority: int | None = None, idempotency_key: str | None = None, temperature: float | None = None,
               stop: list[str] | None = None, queue_timeout_s: float | None = None, **extra: Any) -> JobHandle:
        """Submit a prompt; returns at once with the queued job (``extra``: top_p, top_k, seed)."""
        body = submit_body(prompt, deadline_s=deadline_s, max_tokens=max_tokens, priority=priority,
                           idempotency_key=idempotency_key, temperature=temperature, stop=stop,
                           queue_timeout_s=queue_timeout_s, **extra)
        return JobHandle(self, self._request("POST", "/v1/jobs", json=body))

    def submit_many(self, prompts: Iterable[str], **params: Any) -> list[JobHandle]:
        return [self.submit(p, **params) for p in prompts]

    def job(self, job_id: str) -> JobHandle:
        return JobHandle(self, self._request("GET", f"/v1/jobs/{job_id}"))

    def jobs(self, status: str | list[str] | None = None, limit: int = 100) -> list[JobHandle]:
        """Jobs newest first, optionally only those in ``status`` (one or a list)."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = [status] if isinstance(status, str) else list(status)
        return [JobHandle(self, j) for j in self._request("GET", "/v1/jobs", params=params)["jobs"]]

    def cancel(self, job_id: str) -> JobHandle:
        return JobHandle(self, self._request("POST", f"/v1/jobs/{job_id}/cancel"))

    def wait_all(self, handles: Iterable[JobHandle], timeout: float | None = None,
                 progress: bool = True) -> list[JobHandle]:
        return wait_all(handles, timeout=timeout, progress=progress)

    # admin ---------------------------------------------------------------------------
    def kill(self, job_id: str) -> JobHandle:
        """Admin kill: a queued job ends at once; a running one is interrupted, then escalated."""
        return JobHandle(self, self._request("POST", f"/admin/jobs/{job_id}/kill"))

    def engines(self) -> list[dict[str, Any]]:
        """The supervisor's engines: id, host, pid, gpu, state, job_id, backend, model, rss_mb, ..."""
        return self._request("GET", "/admin/engines")["engines"]

    def interrupt_engine(self, engine_id: int) -> list[str]:
        return self._request("POST", f"/admin/engines/{engine_id}/interrupt")["interrupted"]

    def drain_engine(self, engine_id: int, undo: bool = False) -> dict[str, Any]:
        """Stop (``undo``: resume) dispatching jobs to an engine; its running job finishes."""
        return self._request("POST", f"/admin/engines/{engine_id}/drain", params={"undo": "true"} if undo else None)

    def restart_engine(self, engine_id: int, wait: bool = True, timeout: float = 60.0) -> dict[str, Any]:
        """Replace an engine (a running job on it is killed). With ``wait``: the replacement's engine dict."""
        before = {e["id"] for e in self.engines()}
        answer = self._request("POST", f"/admin/engines/{engine_id}/restart")
        if not wait:
            return answer
        end = time.monotonic() + timeout
        while True:
            engines = self.engines()
            ids = {e["id"] for e in engines}
            new = [e for e in engines if e["id"] not in before and e["state"] in ("idle", "busy")]
            if engine_id not in ids and new:
                return new[0]
            if time.monotonic() >= end:
                raise JobTimeout(f"engine {engine_id} not replaced after {timeout}s: {engines}")
            time.sleep(0.05)

    # health --------------------------------------------------------------------------
    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> Client:
        end = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() >= end:
                raise ServerUnreachable(f"llmsup at {self.url} (from {self.endpoint.source}) "
                                        f"not ready after {timeout}s")
            time.sleep(0.1)
        return self

    # the cluster itself ----------------------------------------------------------------
    def cluster(self, **kwargs: Any) -> Any:
        """An ``ipyparallel.Client`` on the server's cluster (from the run directory); see the module doc."""
        from llmsup.supervisor.notebook_cluster import connect_cluster

        return connect_cluster(self.run_dir, **kwargs)

    def sync_cluster(self, rc: Any, timeout: float = 30.0) -> list[int]:
        """Wait until ``rc`` (from :meth:`cluster`) sees the engines the supervisor lists (e.g. after a restart)."""
        from llmsup.supervisor.notebook_cluster import sync_cluster

        return sync_cluster(self, rc, timeout)

    @contextmanager
    def borrow_engine(self, engine_id: int | None = None, timeout: float = 60.0, rc: Any = None,
                      release_timeout: float = 30.0) -> Iterator[Any]:
        """Take one engine out of the supervisor's dispatch and yield a DirectView of it (see notebook_cluster)."""
        from llmsup.supervisor.notebook_cluster import borrow_engine

        with borrow_engine(self, engine_id=engine_id, timeout=timeout, rc=rc,
                           release_timeout=release_timeout) as view:
            yield view

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<llmsup Client {self.url}>"


def wait_all(handles: Iterable[JobHandle], timeout: float | None = None, progress: bool = True,
             interval: float = 0.25) -> list[JobHandle]:
    """Wait until every job has ended; with ``progress``, one live bar for the batch. ``JobTimeout`` on timeout."""
    from llmsup.supervisor.progress import batch_progress

    return batch_progress(list(handles), timeout=timeout, interval=interval, show=progress)
