"""asyncio helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(aw: Awaitable[T], timeout: float | None) -> T:
    """``await aw`` with a time limit (raises TimeoutError).

    Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives as
    the awaited thing completes, which left a stopping supervisor waiting for
    ever on a loop task; ``asyncio.timeout`` does not.
    """
    async with asyncio.timeout(timeout):
        return await aw
