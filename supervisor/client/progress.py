"""Live progress for jobs: ``tqdm.auto`` (a widget in Jupyter with ipywidgets, text elsewhere).

One job: tokens so far out of ``max_tokens``, and time left before its deadline.
A batch: jobs ended out of all, with running / queued counts, tokens, and the nearest deadline.
Time left is counted from the server's start time with this machine's clock.

The snapshots come from long-polls (``GET /v1/jobs/{id}?wait_s=``): a round lasts ``interval`` at the most and
ends as soon as the job it waits on does; nothing sleeps on this side. The bars are drawn by whoever consumes
the snapshots: the sync client does it in the caller's thread (Jupyter sends a thread's output to the cell that
started the thread), the async client in its own loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Self

from llmsup.supervisor.client.base import WAIT_STEP_S, Deadline, time_left
from llmsup.supervisor.client.errors import JobTimeout
from llmsup.supervisor.client.events import TERMINAL

if TYPE_CHECKING:
    from llmsup.supervisor.client.asynchronous import AsyncJobHandle


def _tqdm(**kwargs: Any) -> Any:
    import warnings

    with warnings.catch_warnings():  # without ipywidgets tqdm.auto falls back to text, with a warning
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm(**kwargs)


def _job_postfix(job: dict[str, Any]) -> str:
    status = job["status"]
    if status == "running":
        left = time_left(job, time.time())
        engine = job.get("engine") or {}
        where = f" on engine {engine.get('id')}" if engine else ""
        return f"running{where}, {left:.1f}s left" if left is not None else f"running{where}"
    if status in TERMINAL and job.get("error"):
        return f"{status}: {job['error']}"
    return status


def _batch_postfix(jobs: list[dict[str, Any]]) -> str:
    counts = Counter(j["status"] for j in jobs)
    tokens = sum(j.get("tokens", 0) for j in jobs)
    lefts = [t for t in (time_left(j, time.time()) for j in jobs) if t is not None]
    parts = [f"{counts.pop('running', 0)} running", f"{counts.pop('queued', 0)} queued", f"{tokens} tok"]
    if lefts:
        parts.append(f"next deadline {min(lefts):.1f}s")
    parts += [f"{n} {status}" for status, n in sorted(counts.items())]
    return ", ".join(parts)


class _Bar:
    """A tqdm bar drawn on demand (``show`` False: nothing, and tqdm is not needed)."""

    def __init__(self, show: bool, **kwargs: Any) -> None:
        self.bar = _tqdm(leave=True, **kwargs) if show else None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JobBar(_Bar):
    """One job: tokens out of ``max_tokens``, its state, and the time left before its deadline."""

    def __init__(self, job: dict[str, Any], show: bool = True) -> None:
        super().__init__(show, total=(job.get("params") or {}).get("max_tokens"), desc=job["id"], unit="tok")

    def update(self, job: dict[str, Any]) -> None:
        if self.bar is None:
            return
        bar = self.bar
        bar.n = job.get("tokens", 0)
        if job["status"] == "succeeded" and bar.total and bar.n < bar.total:
            n = bar.n
            bar.reset(total=n)  # it stopped before max_tokens: complete, not failed (also resizes the widget)
            bar.n = n
        bar.set_postfix_str(_job_postfix(job), refresh=False)
        bar.refresh()


class BatchBar(_Bar):
    """A batch: jobs ended out of all, with running / queued counts, tokens and the nearest deadline."""

    def __init__(self, count: int, show: bool = True) -> None:
        super().__init__(show, total=count, desc="jobs", unit="job")

    def update(self, jobs: list[dict[str, Any]]) -> None:
        if self.bar is None:
            return
        self.bar.n = sum(1 for j in jobs if j["status"] in TERMINAL)
        self.bar.set_postfix_str(_batch_postfix(jobs), refresh=False)
        self.bar.refresh()


async def job_updates(handle: AsyncJobHandle, timeout: float | None = None,
                      interval: float = 0.2) -> AsyncIterator[dict[str, Any]]:
    """The job's snapshots until it has ended: one now, then one per long-poll of ``interval``."""
    end = Deadline.after(timeout)
    await handle.refresh()
    while True:
        yield handle.data
        if handle.done:
            return
        if end.passed():
            raise JobTimeout(f"job {handle.id} still {handle.status} after {timeout}s")
        await handle.refresh(wait_s=end.step(interval))


async def batch_updates(handles: list[AsyncJobHandle], timeout: float | None = None, interval: float = 0.25,
                        every_job: bool = True) -> AsyncIterator[list[dict[str, Any]]]:
    """The jobs' snapshots until every one has ended.

    Each round long-polls the first unfinished job for ``interval`` at the most (it ends at once when that job
    does) and, with ``every_job``, fetches the other unfinished ones meanwhile; without, the jobs are waited for
    one after the other (one request per job and ``interval``).
    """
    end = Deadline.after(timeout)
    while True:
        pending = [h for h in handles if not h.done]
        yield [h.data for h in handles]
        if not pending:
            return
        if end.passed():
            raise JobTimeout(f"{len(pending)} of {len(handles)} jobs not ended after {timeout}s")
        others = pending[1:] if every_job else []
        await asyncio.gather(pending[0].refresh(wait_s=end.step(interval)), *(h.refresh() for h in others))


def watch_batch(handles: list[AsyncJobHandle], timeout: float | None, progress: bool,
                interval: float) -> AsyncIterator[list[dict[str, Any]]]:
    """What ``wait_all`` follows: every job each ``interval`` for a bar, else one job at a time, long-polled."""
    if progress:
        return batch_updates(handles, timeout, interval, every_job=True)
    return batch_updates(handles, timeout, WAIT_STEP_S, every_job=False)


class PipelineBar:
    """A pipeline's steps ended out of all, with the running ones named (nothing drawn without ``show``)."""

    def __init__(self, pipeline: dict[str, Any], show: bool) -> None:
        self.bar = _tqdm(total=len(pipeline["steps"]), desc=pipeline["id"], unit="step") if show else None
        self.update(pipeline)

    def update(self, pipeline: dict[str, Any]) -> None:
        if self.bar is None:
            return
        steps = pipeline["steps"]
        self.bar.n = sum(1 for s in steps if s["status"] not in ("waiting", "queued", "running"))
        running = [s["name"] for s in steps if s["status"] == "running"]
        status = pipeline["status"] + (f": {pipeline['error']}" if pipeline.get("error") else "")
        self.bar.set_postfix_str(f"running {', '.join(running)}" if running else status, refresh=False)
        self.bar.refresh()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
