"""One moment, read by the caller: the core decides at the time it is given and never reads a clock itself."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Now:
    """The two clocks at one moment: ``mono`` (monotonic seconds: deadlines, the ladder, beats, ages) and ``wall``
    (seconds since the epoch: what job records and launches keep)."""

    mono: float
    wall: float
