"""Python client for a running ``llmsup serve``, for notebooks and scripts (REST only, so the server may be remote).

    from llmsup.supervisor.client import Client
    client = Client()                      # LLMSUP_URL, else <LLMSUP_RUN_DIR or ./.llmsup>/server.json
    job = client.submit("Hello", deadline_s=5, max_tokens=32)
    for piece in job.stream():             # text as it is generated (the job's event stream)
        print(piece, end="")
    job.wait(10).status                    # 'succeeded', 'timed_out' (partial output kept), ...
    client.wait_all([client.submit(p) for p in prompts])   # one live progress bar for the batch

This is the blocking face of :mod:`llmsup.supervisor.client.asynchronous`: each call runs the async client's own code on
a private event loop thread (``client_loop``) and waits for it, so both behave alike by construction. Bars and
streamed pieces reach the caller in its own thread.

Errors are :class:`LlmsupError` subclasses carrying the server's message and HTTP status
(``QueueFull.retry_after``, ``NotFound``, ``InvalidRequest``, ``AuthError``, ``ServerUnreachable``, ``JobTimeout``).
The API key goes to job routes, the admin token only to ``/admin/...`` routes.

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

from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar, Unpack

import httpx

from llmsup.supervisor.client.asynchronous import AsyncClient, AsyncJobHandle
from llmsup.supervisor.client.base import PIPELINE_POLL_S, AtEndpoint, Deadline, Endpoint, JobFields, SubmitParams
from llmsup.supervisor.client.errors import (
    AuthError,
    BorrowError,
    Conflict,
    InvalidRequest,
    JobFailed,
    JobTimeout,
    LlmsupError,
    NotFound,
    QueueFull,
    ServerUnreachable,
)
from llmsup.supervisor.client.loop import shared_loop
from llmsup.supervisor.client.progress import BatchBar, JobBar, PipelineBar, job_updates, watch_batch

__all__ = [
    "AsyncClient", "AsyncJobHandle", "AuthError", "BorrowError", "Client", "Conflict", "InvalidRequest", "JobFailed",
    "JobHandle", "JobTimeout", "LlmsupError", "NotFound", "QueueFull", "ServerUnreachable", "wait_all",
]
T = TypeVar("T")


class JobHandle(JobFields):
    """A submitted job. ``status``, ``output``, ``tokens``, ``error``, ``engine`` fetch the job again until it
    has ended; ``done`` and ``data`` (the job's JSON) read the last snapshot."""

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        self.client = client
        self.core = AsyncJobHandle(client.core, data)

    @property
    def data(self) -> dict[str, Any]:
        return self.core.data

    @data.setter
    def data(self, value: dict[str, Any]) -> None:
        self.core.data = value

    def _snapshot(self) -> dict[str, Any]:
        return self.data if self.done else self.refresh().data

    def refresh(self, wait_s: float = 0.0) -> Self:
        """Fetch the job again; with ``wait_s``, the server answers when the job ends or after ``wait_s``."""
        self.client._run(self.core.refresh(wait_s))
        return self

    def wait(self, timeout: float | None = None, check: bool = False) -> Self:
        """Block until the job ends (``JobTimeout`` after ``timeout`` s); ``check``: ``JobFailed`` unless it succeeded."""
        self.client._run(self.core.wait(timeout, check))
        return self

    def cancel(self) -> Self:
        """Cancel: a queued job ends at once; a running one is interrupted (its partial output is kept)."""
        self.client._run(self.core.cancel())
        return self

    def kill(self) -> Self:
        """Admin kill (needs the admin token)."""
        self.client._run(self.core.kill())
        return self

    def stream(self, timeout: float | None = None, poll_interval: float = 0.1) -> Iterator[str]:
        """The job's text piece by piece as it is generated, until it ends (see ``AsyncJobHandle.stream``)."""
        return self.client._iterate(self.core.stream(timeout, poll_interval))

    def progress(self, timeout: float | None = None, interval: float = 0.2, show: bool = True) -> Self:
        """Show a live progress bar (tokens so far, time left before the deadline) until the job ends."""
        with JobBar(self.data, show) as bar:
            for job in self.client._iterate(job_updates(self.core, timeout, interval)):
                bar.update(job)
        return self


class Client(AtEndpoint):
    """Synchronous client; the arguments are :class:`AsyncClient`'s (``url`` / ``run_dir`` / ``admin_token`` /
    ``api_key`` default to the environment)."""

    def __init__(self, url: str | None = None, run_dir: Path | str | None = None, admin_token: str | None = None,
                 timeout: float = 30.0, api_key: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.core = AsyncClient(url, run_dir, admin_token, timeout, api_key, transport)
        self._loop = shared_loop()

    def _run(self, aw: Awaitable[T]) -> T:
        return self._loop.run(aw)

    def _iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        return self._loop.iterate(iterator)

    def _handle(self, core: AsyncJobHandle) -> JobHandle:
        return JobHandle(self, core.data)

    @property
    def endpoint(self) -> Endpoint:
        return self.core.endpoint

    @endpoint.setter
    def endpoint(self, value: Endpoint) -> None:
        self.core.endpoint = value

    # jobs --------------------------------------------------------------------------
    def submit(self, prompt: str, **params: Unpack[SubmitParams]) -> JobHandle:
        """Submit a prompt; returns at once with the queued job."""
        return self._handle(self._run(self.core.submit(prompt, **params)))

    def submit_many(self, prompts: Iterable[str], **params: Unpack[SubmitParams]) -> list[JobHandle]:
        return [self._handle(h) for h in self._run(self.core.submit_many(prompts, **params))]

    def job(self, job_id: str) -> JobHandle:
        return self._handle(self._run(self.core.job(job_id)))

    def jobs(self, status: str | list[str] | None = None, limit: int = 100) -> list[JobHandle]:
        """Jobs newest first, optionally only those in ``status`` (one or a list)."""
        return [self._handle(h) for h in self._run(self.core.jobs(status, limit))]

    def cancel(self, job_id: str) -> JobHandle:
        return self._handle(self._run(self.core.cancel(job_id)))

    def wait_all(self, handles: Iterable[JobHandle], timeout: float | None = None, progress: bool = True,
                 interval: float = 0.25) -> list[JobHandle]:
        """Until every job has ended; with ``progress``, one live bar for the batch. ``JobTimeout`` on timeout."""
        handles = list(handles)
        strangers = [h.id for h in handles if h.client is not self]
        if strangers:
            raise ValueError(f"jobs {strangers} belong to another Client: wait for them there")
        with BatchBar(len(handles), progress) as bar:
            for jobs in self._iterate(watch_batch([h.core for h in handles], timeout, progress, interval)):
                bar.update(jobs)
        return handles

    # pipelines -----------------------------------------------------------------------
    def pipeline(self, steps: list[dict[str, Any]], deadline_s: float | None = None, priority: int = 0,
                 idempotency_key: str | None = None) -> dict[str, Any]:
        """Queue a pipeline (see :meth:`AsyncClient.pipeline`); returns its JSON at once."""
        return self._run(self.core.pipeline(steps, deadline_s, priority, idempotency_key))

    def pipeline_data(self, pipeline_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        return self._run(self.core.pipeline_data(pipeline_id, wait_s))

    def wait_pipeline(self, pipeline_id: str, timeout: float | None = None, progress: bool = True) -> dict[str, Any]:
        """Until the pipeline ends, with a live bar of its steps (drawn in this thread)."""
        data = self.pipeline_data(pipeline_id)
        deadline = Deadline.after(timeout)
        with PipelineBar(data, progress) as bar:
            while data["status"] in ("queued", "running"):
                if deadline.passed():
                    raise JobTimeout(f"pipeline {pipeline_id} still {data['status']} after {timeout}s")
                data = self.pipeline_data(pipeline_id, deadline.step(PIPELINE_POLL_S))
                bar.update(data)
        return data

    def cancel_pipeline(self, pipeline_id: str) -> dict[str, Any]:
        return self._run(self.core.cancel_pipeline(pipeline_id))

    # admin ---------------------------------------------------------------------------
    def kill(self, job_id: str) -> JobHandle:
        """Admin kill: a queued job ends at once; a running one is interrupted, then escalated."""
        return self._handle(self._run(self.core.kill(job_id)))

    def engine_list(self) -> dict[str, Any]:
        """``GET /admin/engines`` whole: ``engines`` and the engine sets still ``starting``."""
        return self._run(self.core.engine_list())

    def engines(self) -> list[dict[str, Any]]:
        """The supervisor's engines: id, host, pid, gpu, state, job_id, backend, model, rss_mb, ..."""
        return self._run(self.core.engines())

    def hosts(self) -> list[dict[str, Any]]:
        """``GET /admin/hosts``: every host with its engines, the server's own first."""
        return self._run(self.core.hosts())

    def revoke_host(self, host: str) -> dict[str, Any]:
        """Revoke a host (its name or host_key): its engines leave, its join agent stops, its keys are revoked."""
        return self._run(self.core.revoke_host(host))

    def interrupt_engine(self, engine_id: int) -> list[str]:
        return self._run(self.core.interrupt_engine(engine_id))

    def drain_engine(self, engine_id: int, undo: bool = False) -> dict[str, Any]:
        """Stop (``undo``: resume) dispatching jobs to an engine; its running job finishes."""
        return self._run(self.core.drain_engine(engine_id, undo))

    def undrain_engine(self, engine_id: int) -> dict[str, Any]:
        return self._run(self.core.undrain_engine(engine_id))

    def restart_engine(self, engine_id: int, wait: bool = True, timeout: float = 60.0) -> dict[str, Any]:
        """Replace an engine (a running job on it is killed). With ``wait``: the replacement's engine dict."""
        return self._run(self.core.restart_engine(engine_id, wait, timeout))

    # health --------------------------------------------------------------------------
    def ready(self) -> bool:
        return self._run(self.core.ready())

    def wait_ready(self, timeout: float = 60.0) -> Self:
        self._run(self.core.wait_ready(timeout))
        return self

    # the cluster itself ----------------------------------------------------------------
    def cluster(self, **kwargs: Any) -> Any:
        """An ``ipyparallel.Client`` on the server's cluster (from the run directory); see the module doc."""
        return self.core.cluster(**kwargs)

    def sync_cluster(self, rc: Any, timeout: float = 30.0) -> list[int]:
        """Wait until ``rc`` (from :meth:`cluster`) sees the engines the supervisor lists (e.g. after a restart)."""
        return self._run(self.core.sync_cluster(rc, timeout))

    @contextmanager
    def borrow_engine(self, engine_id: int | None = None, timeout: float = 60.0, rc: Any = None,
                      release_timeout: float = 30.0) -> Iterator[Any]:
        """Take one engine out of the supervisor's dispatch and yield a DirectView of it (see notebook_cluster)."""
        with self._loop.enter(self.core.borrow_engine(engine_id, timeout, rc, release_timeout)) as view:
            yield view

    def close(self) -> None:
        self._run(self.core.aclose())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<llmsup Client {self.url}>"


def wait_all(handles: Iterable[JobHandle], timeout: float | None = None, progress: bool = True,
             interval: float = 0.25) -> list[JobHandle]:
    """Wait until every job has ended; with ``progress``, one live bar for the batch. ``JobTimeout`` on timeout."""
    handles = list(handles)
    return handles[0].client.wait_all(handles, timeout, progress, interval) if handles else handles
