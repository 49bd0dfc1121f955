"""Live progress for jobs: ``tqdm.auto`` (a widget in Jupyter with ipywidgets, text elsewhere).

One job: tokens so far out of ``max_tokens``, and time left before its deadline.
A batch: jobs ended out of all, with running / queued counts, tokens, and the nearest deadline.
Time left is counted from the server's start time with this machine's clock.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from llmsup.supervisor.client_base import TERMINAL, JobTimeout, time_left

if TYPE_CHECKING:
    from llmsup.supervisor.client import JobHandle


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


def _set_total(bar: Any, total: int) -> None:
    n = bar.n
    bar.reset(total=total)  # also resizes the notebook widget
    bar.n = n


def job_progress(handle: JobHandle, timeout: float | None = None, interval: float = 0.2,
                 show: bool = True) -> JobHandle:
    end = None if timeout is None else time.monotonic() + timeout
    job = handle.refresh().data
    total = (job.get("params") or {}).get("max_tokens")
    bar = _tqdm(total=total, desc=job["id"], unit="tok", leave=True, disable=not show)
    try:
        while True:
            bar.n = job.get("tokens", 0)
            if job["status"] == "succeeded" and bar.total and bar.n < bar.total:
                _set_total(bar, bar.n)  # it stopped before max_tokens: complete, not failed
            bar.set_postfix_str(_job_postfix(job), refresh=False)
            bar.refresh()
            if job["status"] in TERMINAL:
                return handle
            if end is not None and time.monotonic() >= end:
                raise JobTimeout(f"job {handle.id} still {job['status']} after {timeout}s")
            time.sleep(interval)
            job = handle.refresh().data
    finally:
        bar.close()


def _batch_postfix(jobs: list[dict[str, Any]]) -> str:
    counts = Counter(j["status"] for j in jobs)
    tokens = sum(j.get("tokens", 0) for j in jobs)
    lefts = [t for t in (time_left(j, time.time()) for j in jobs) if t is not None]
    parts = [f"{counts.pop('running', 0)} running", f"{counts.pop('queued', 0)} queued", f"{tokens} tok"]
    if lefts:
        parts.append(f"next deadline {min(lefts):.1f}s")
    parts += [f"{n} {status}" for status, n in sorted(counts.items())]
    return ", ".join(parts)


def batch_progress(handles: list[JobHandle], timeout: float | None = None, interval: float = 0.25,
                   show: bool = True) -> list[JobHandle]:
    end = None if timeout is None else time.monotonic() + timeout
    bar = _tqdm(total=len(handles), desc="jobs", unit="job", leave=True, disable=not show)
    try:
        while True:
            for h in handles:
                if not h.done:
                    h.refresh()
            jobs = [h.data for h in handles]
            bar.n = sum(1 for j in jobs if j["status"] in TERMINAL)
            bar.set_postfix_str(_batch_postfix(jobs), refresh=False)
            bar.refresh()
            if bar.n == len(handles):
                return handles
            if end is not None and time.monotonic() >= end:
                raise JobTimeout(f"{len(handles) - bar.n} of {len(handles)} jobs not ended after {timeout}s")
            time.sleep(interval)
    finally:
        bar.close()
