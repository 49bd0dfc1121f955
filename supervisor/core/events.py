"""Fan-out of job events (status changes, tokens) to live subscribers (SSE, dashboard).

Subscribers get bounded queues; a subscriber that falls behind loses its
subscription (``None`` is queued as the end marker) instead of growing memory.
"""

from __future__ import annotations

import asyncio
from typing import Any

Event = dict[str, Any]


class Subscription:
    def __init__(self, hub: "EventHub", job_id: str | None, maxsize: int) -> None:
        self.hub = hub
        self.job_id = job_id
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.overflowed = False

    def put(self, event: Event) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)

    async def get(self) -> Event | None:
        return await self.queue.get()

    def ready(self, limit: int) -> list[Event | None]:
        """Up to ``limit`` events already queued, without waiting (a consumer that handles them in one go)."""
        out: list[Event | None] = []
        while len(out) < limit and not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out

    def close(self) -> None:
        self.hub.unsubscribe(self)


class EventHub:
    """Subscribers of one job are found by its id, so a publish costs the job's own subscribers plus those of
    every job (``job_id=None``), not one look at every open stream."""

    def __init__(self) -> None:
        self._all: set[Subscription] = set()  # job_id None: every job's events
        self._by_job: dict[str, set[Subscription]] = {}

    def subscribe(self, job_id: str | None = None, maxsize: int = 10_000) -> Subscription:
        sub = Subscription(self, job_id, maxsize)
        if job_id is None:
            self._all.add(sub)
        else:
            self._by_job.setdefault(job_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.job_id is None:
            self._all.discard(sub)
            return
        subs = self._by_job.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_job[sub.job_id]

    def publish(self, job_id: str | None, event: Event) -> None:
        for sub in list(self._all):
            sub.put(event)
        if job_id is not None and job_id in self._by_job:
            for sub in list(self._by_job[job_id]):
                sub.put(event)

    def subscribers(self) -> int:
        return len(self._all) + sum(len(subs) for subs in self._by_job.values())

    def close_all(self) -> None:
        for sub in [*self._all, *(s for subs in self._by_job.values() for s in subs)]:
            try:
                sub.queue.put_nowait(None)
            except asyncio.QueueFull:
                pass
        self._all.clear()
        self._by_job.clear()
