"""Job listings and counts that stay off the event loop that runs the deadline timers.

A listing parses each row's JSON record, prompt included (up to ``max_prompt_chars`` each, up to 1000 rows a
page): done on the loop, that delays every deadline, token and dispatch behind it. So pages are read and
parsed in a worker thread, on the store's own read-only connection (``ControlPlane.page_reader``), and rendered
to JSON there too; only running jobs are looked up again on the loop, for their live output. Stores
without a reader (the in-memory twin) are listed in place.

``/v1/events`` subscribers need the number of jobs in each status every tick: :class:`SharedCounts` computes
them (one indexed count per status) at most once per ``ttl_s`` for all subscribers together.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from typing import TypeVar

from pydantic import BaseModel

from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.core.requests import JobNotFound
from llmsup.supervisor.port import ControlPlane

T = TypeVar("T")


async def list_jobs(sup: ControlPlane, statuses: Iterable[JobStatus] | None = None, owner: str | None = None,
                    limit: int = 100, offset: int = 0) -> list[Job]:
    """Newest first, as ``ControlPlane.list``; parsed in a worker thread when the store allows it."""
    reader = sup.page_reader()
    if reader is None:
        return sup.list(list(statuses) if statuses else None, owner=owner, limit=limit, offset=offset)
    jobs = await asyncio.to_thread(reader.list, list(statuses) if statuses else None, owner, limit, offset)
    return [_live(sup, job) for job in jobs]


def _live(sup: ControlPlane, job: Job) -> Job:
    if job.status is not JobStatus.RUNNING:
        return job
    try:
        return sup.get(job.id)  # with the output streamed so far
    except JobNotFound:
        return job


async def off_loop(render: Callable[[], T]) -> T:
    """Run a CPU-heavy rendering (e.g. a page of jobs to JSON) in a worker thread."""
    return await asyncio.to_thread(render)


def render_page(items: Iterable[BaseModel], **fields: object) -> bytes:
    """``{"jobs": [...], **fields}`` as JSON, serialised item by item and joined once. (One call serialising a
    whole page of large jobs holds the GIL, and so stalls the event loop, for its whole duration; measured:
    ``bench/bench_listing.py``.)"""
    parts = [b'{"jobs":[']
    for i, item in enumerate(items):
        if i:
            parts.append(b",")
        parts.append(item.model_dump_json().encode())
    parts.append(b"]")
    for name, value in fields.items():
        parts.append(b"," + json.dumps(name).encode() + b":" + json.dumps(value).encode())
    parts.append(b"}")
    return b"".join(parts)


class SharedCounts:
    """Jobs per status, recomputed at most once per ``ttl_s`` whoever asks (one subscriber or a thousand)."""

    def __init__(self, ttl_s: float = 0.5) -> None:
        self.ttl_s = ttl_s
        self._at = float("-inf")
        self._counts: dict[str, int] = {}
        self.computed = 0  # how many times the store was asked (tests, metrics)

    def get(self, sup: ControlPlane) -> dict[str, int]:
        now = asyncio.get_running_loop().time()
        if now - self._at >= self.ttl_s:
            self._counts = {status.value: sup.count(status) for status in JobStatus}
            self._at = now
            self.computed += 1
        return dict(self._counts)
