"""Fair shares between owners at the same priority: start-time fair queuing, kept by the store.

Queued jobs start by priority, then by a *turn* given at submission, then by arrival. An owner's job takes the turn
after that owner's previous one at this priority, but never one before the current turn (the head of the queue at
this priority when it was last read). So one owner's 10,000 queued jobs take turns 1..10,000 while another owner's
job, submitted later, takes the turn after the current one: the owners alternate instead of the second waiting for
all of the first's. Jobs without an owner (the admin's) are one owner of their own; callers without a key are one
owner too (``web/auth.py``).

The order is a column the store indexes (``priority DESC, turn, seq``): a pick costs what it did (O(log n)). The
state is one number per (owner, priority) with queued jobs and one per priority, rebuilt from the store at start.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_OWNERS = 100_000  # (owner, priority) turns kept; beyond, those already passed by the current turn are dropped


class Turns:
    def __init__(self) -> None:
        self._last: dict[tuple[str | None, int], float] = {}  # the turn of an owner's latest job at a priority
        self._current: dict[int, float] = {}  # per priority: the turn at the head of the queue when last read

    def restore(self, last: Iterable[tuple[str | None, int, float]], current: Iterable[tuple[int, float]]) -> None:
        """The state a store held: each (owner, priority)'s latest queued turn, and each priority's head turn."""
        self._last = {(owner, priority): turn for owner, priority, turn in last}
        self._current = dict(current)

    def take(self, owner: str | None, priority: int) -> float:
        """The turn of a job this owner submits now at this priority."""
        key = (owner, priority)
        turn = max(self._last.get(key, 0.0), self._current.get(priority, 0.0)) + 1.0
        self._last[key] = turn
        if len(self._last) > MAX_OWNERS:
            self._last = {k: t for k, t in self._last.items() if t > self._current.get(k[1], 0.0)}
        return turn

    def read(self, heads: Iterable[tuple[int, float]]) -> None:
        """The queue was read: each priority's head turn (the lowest one read there) is the current turn."""
        for priority, turn in heads:
            if turn > self._current.get(priority, 0.0):
                self._current[priority] = turn
