"""Waiting for a condition: poll it against a deadline (a sleep is never the synchronisation itself).

``eventually`` for plain code, ``eventually_async`` inside a coroutine (it yields to the event loop between
polls, so the supervisor running on that loop can make the condition come true).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
POLL_S = 0.02


@dataclass(frozen=True)
class _Deadline:
    """The end (monotonic clock) of a wait of ``timeout`` seconds for ``what``."""

    timeout: float
    what: str
    end: float

    @classmethod
    def after(cls, timeout: float, what: str) -> _Deadline:
        return cls(timeout, what, time.monotonic() + timeout)

    def poll(self, predicate: Callable[[], T]) -> T | None:
        """``predicate``'s value when it is truthy, else None while time is left; fails once the deadline passed."""
        value = predicate()
        if value:
            return value
        if time.monotonic() >= self.end:
            raise AssertionError(f"timed out after {self.timeout}s waiting for {self.what}")
        return None


def eventually(predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition", interval: float = POLL_S) -> T:
    """Poll ``predicate`` until it returns a truthy value, and return that value; fail after ``timeout`` seconds."""
    deadline = _Deadline.after(timeout, what)
    while (value := deadline.poll(predicate)) is None:
        time.sleep(interval)
    return value


async def eventually_async(predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition",
                           interval: float = POLL_S) -> T:
    """``eventually`` for coroutines: the loop runs between polls."""
    deadline = _Deadline.after(timeout, what)
    while (value := deadline.poll(predicate)) is None:
        await asyncio.sleep(interval)
    return value
