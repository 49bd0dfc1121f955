"""Hold a SIGINT that arrives inside a critical section, raise it when the section ends.

vLLM's engine step (schedule, run the model, update the scheduler, process
outputs) is not interrupt-safe: a ``KeyboardInterrupt`` raised half-way can
leave the scheduler and the output processor disagreeing (a request finished
by a stop string but never aborted in EngineCore keeps generating unseen).
Wrapping each step in :class:`DeferredSigint` makes the interrupt land
between steps: the delay is at most one step (a few ms for a decode step).

Only the main thread can swap signal handlers; elsewhere this is a no-op (no
``KeyboardInterrupt`` is delivered to other threads anyway). A handler that
was ``SIG_IGN`` or ``SIG_DFL`` before stays in charge: nothing is raised.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any, Self


class DeferredSigint:
    def __init__(self) -> None:
        self.pending = False
        self._previous: Any = None
        self._active = False

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self.pending = True

    def __enter__(self) -> Self:
        self.pending = False
        self._active = threading.current_thread() is threading.main_thread()
        if self._active:
            self._previous = signal.signal(signal.SIGINT, self._hold)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._active:
            return
        previous, self._previous = self._previous, None
        signal.signal(signal.SIGINT, previous)
        if self.pending and exc_type is None and callable(previous):
            previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt here
