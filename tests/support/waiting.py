"""Waiting for a condition: poll it against a deadline (a sleep is never the synchronisation itself).

``eventually`` for plain code, ``eventually_async`` inside a coroutine (it yields to the event loop between
polls, so the supervisor running on that loop can make the condition come true).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
POLL_S = 0.02


def eventually(predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition", interval: float = POLL_S) -> T:
    """Poll ``predicate`` until it returns a truthy value, and return that value; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def eventually_async(predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition",
                           interval: float = POLL_S) -> T:
    """``eventually`` for coroutines: the loop runs between polls."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
