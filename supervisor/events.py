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

    def close(self) -> None:
        self.hub.unsubscribe(self)


class EventHub:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def subscribe(self, job_id: str | None = None, maxsize: int = 10_000) -> Subscription:
        sub = Subscription(self, job_id, maxsize)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, job_id: str | None, event: Event) -> None:
        for sub in list(self._subs):
            if sub.job_id is None or sub.job_id == job_id:
                sub.put(event)

    def close_all(self) -> None:
        for sub in list(self._subs):
            try:
                sub.queue.put_nowait(None)
            except asyncio.QueueFull:
                pass
        self._subs.clear()
