"""How late the event loop runs: a timer due every ``interval_s`` and how much later it fired.

The supervisor's deadline timers, the token stream and the web routes share one asyncio loop; anything that holds
it delays them all. ``llmsup_event_loop_lag_seconds`` (a histogram) and ``llmsup_event_loop_lag_max_seconds``
(the worst of the last minute) show it on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Gauge, Histogram

from llmsup.supervisor.metrics.buckets import LATENCY


class LoopLag:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Histogram("llmsup_event_loop_lag_seconds", "How late a periodic timer on the event loop fired",
                             buckets=LATENCY, registry=registry)
        self.worst = Gauge("llmsup_event_loop_lag_max_seconds", "The largest lag of the loop timer in the last minute",
                           registry=registry)
        self._window: list[tuple[float, float]] = []

    @classmethod
    def of(cls, registry: CollectorRegistry) -> LoopLag:
        """One per registry (an app rebuilt on the same supervisor reuses it)."""
        existing = getattr(registry, "_llmsup_loop_lag", None)
        if existing is None:
            existing = cls(registry)
            registry._llmsup_loop_lag = existing  # type: ignore[attr-defined]
        return existing

    def observe(self, late_s: float, now: float) -> None:
        self.lag.observe(late_s)
        self._window = [(t, v) for t, v in self._window if now - t < 60] + [(now, late_s)]
        self.worst.set(max(v for _, v in self._window))

    async def run(self, interval_s: float = 0.1) -> None:
        """Forever (a background task of the app): sleep ``interval_s``, observe how much later than that it woke."""
        while True:
            start = time.monotonic()
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            self.observe(max(0.0, now - start - interval_s), now)
