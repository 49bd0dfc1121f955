"""The last minutes of the supervisor, one sample a second: what the dashboard's charts draw (``GET /v1/stats``)."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class StatsSample:
    t: float  # wall clock (s since the epoch)
    queued: int
    running: int
    tokens_per_s: float  # tokens generated per second since the previous sample
    interrupted: int  # jobs stopped by their deadline or a cancel since the previous sample
    killed: int  # engines SIGKILLed by the watchdog since the previous sample
    standby: int  # warm standby engines
    serving: int  # engines taking jobs (idle or busy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Totals:
    """Running totals the samples are differences of."""

    mono: float
    tokens: float
    interrupted: int
    killed: int


class StatsHistory:
    def __init__(self, window_s: float = 300.0, every_s: float = 1.0) -> None:
        self.window_s = window_s
        self.every_s = every_s
        self.samples: deque[StatsSample] = deque(maxlen=max(1, int(window_s / every_s)))
        self._last: Totals | None = None

    def due(self, mono: float) -> bool:
        return self._last is None or mono - self._last.mono >= self.every_s

    def add(self, wall: float, totals: Totals, queued: int, running: int, standby: int, serving: int) -> None:
        last, self._last = self._last, totals
        if last is None:
            return  # the first totals only start the differences
        span = max(1e-6, totals.mono - last.mono)
        self.samples.append(StatsSample(
            t=round(wall, 3), queued=queued, running=running,
            tokens_per_s=round(max(0.0, totals.tokens - last.tokens) / span, 2),
            interrupted=totals.interrupted - last.interrupted, killed=totals.killed - last.killed,
            standby=standby, serving=serving,
        ))

    def since(self, t: float) -> list[StatsSample]:
        """Samples taken after wall time ``t`` (0: all)."""
        return [s for s in self.samples if s.t > t]
