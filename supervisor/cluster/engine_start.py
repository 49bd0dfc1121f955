"""Waiting for an engine's ``init_engine`` task, with its start progress.

The engine publishes each phase of its start (``engines/startup.py``: start, download, load, warm-up, ready)
as IPyParallel data of the running task; this reads it while waiting, hands each new phase on, and counts the
start timeout from the latest one: a download of any length never trips it, an engine stuck in one phase does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
POLL_S = 0.25


@dataclass(frozen=True)
class Progress:
    """One phase of an engine's start, as the engine published it."""

    seq: int
    phase: str
    detail: str = ""
    log_file: str = ""

    @classmethod
    def read(cls, data: Any) -> Progress | None:
        """From a task's published data (``{"progress": {...}}``); None when there is none, or it is malformed."""
        note = data.get("progress") if isinstance(data, dict) else None
        if not isinstance(note, dict) or not isinstance(note.get("seq"), int):
            return None
        return cls(note["seq"], str(note.get("phase", "")), str(note.get("detail", "")), str(note.get("log_file", "")))


def published(task: Any) -> Callable[[], Any]:
    """Reads what an IPyParallel task published so far (``AsyncResult.data``; nothing for other futures)."""

    def read() -> Any:
        try:
            return task.data
        except (AttributeError, KeyError):
            return None

    return read


async def wait_started(task: asyncio.Future[T], read: Callable[[], Any], quiet_timeout: float,
                       on_progress: Callable[[Progress], None], poll_s: float = POLL_S,
                       clock: Callable[[], float] = time.monotonic) -> T:
    """The task's result; ``TimeoutError`` (the task cancelled) once nothing new was published for
    ``quiet_timeout`` seconds. Each new phase seen while it runs goes to ``on_progress``."""
    last: Progress | None = None
    quiet_since = clock()
    while True:
        done, _ = await asyncio.wait({task}, timeout=poll_s)
        if done:
            return task.result()
        seen = Progress.read(read())
        if seen is not None and (last is None or seen.seq != last.seq):
            last, quiet_since = seen, clock()
            on_progress(seen)
        if clock() - quiet_since > quiet_timeout:
            task.cancel()
            phase = f" (last: {last.phase}{': ' + last.detail if last.detail else ''})" if last else ""
            raise TimeoutError(f"no start progress for {quiet_timeout:g}s{phase}")
