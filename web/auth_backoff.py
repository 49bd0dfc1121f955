"""A short back-off after a failed authentication, per client address, without holding the event loop.

After a wrong API key or admin token from an address, that address's next credential check waits until
``auth_backoff_s`` after the failure (an ``asyncio.sleep`` of that request alone: other callers are not delayed);
each further failure doubles the wait, up to :data:`MAX_WAIT_S`. Concurrent guesses from one address are checked one
per slot: a waiter that wakes behind a newer failure waits again, and one that has waited :data:`MAX_WAIT_S` in all
gets 429. A success pushes nothing, so a client that mistyped its key once is slowed once. An address is forgotten
a minute after its last failure; the table holds at most :data:`MAX_ADDRESSES` (the oldest go first).

The logic takes the time as an argument (:meth:`FailedAuth.wait`, :meth:`FailedAuth.failed`); :meth:`gate` is the
one place that reads the clock and sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException

MAX_WAIT_S = 10.0
FORGET_S = 60.0
MAX_ADDRESSES = 10_000


@dataclass
class _Record:
    failures: int
    last: float  # when the last failure was
    until: float  # no check before this


class FailedAuth:
    def __init__(self, backoff_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff_s = backoff_s
        self.clock = clock
        self._table: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def wait(self, address: str, now: float) -> float:
        """Seconds until ``address`` may be checked again (0: now)."""
        record = self._table.get(address)
        if record is None:
            return 0.0
        if now - record.last > FORGET_S:
            del self._table[address]
            return 0.0
        return max(0.0, record.until - now)

    def failed(self, address: str, now: float) -> None:
        if self.backoff_s <= 0:
            return
        record = self._table.pop(address, None)
        failures = 1 if record is None or now - record.last > FORGET_S else record.failures + 1
        delay = min(MAX_WAIT_S, self.backoff_s * 2 ** min(failures - 1, 32))
        self._table[address] = _Record(failures, now, now + delay)  # the newest last: the oldest are evicted first
        while len(self._table) > MAX_ADDRESSES:
            self._table.popitem(last=False)

    async def gate(self, address: str) -> None:
        """Return when ``address`` may be checked; 429 once it has waited :data:`MAX_WAIT_S` in all."""
        waited = 0.0
        while (wait := self.wait(address, self.clock())) > 0:
            if waited + wait > MAX_WAIT_S:
                raise HTTPException(429, "too many failed authentications from this address: retry later",
                                    headers={"Retry-After": str(int(wait) + 1)})
            await asyncio.sleep(wait)
            waited += wait
