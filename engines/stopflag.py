"""Cooperative stop: a flag another thread sets, checked by a backend between tokens.

A backend that sees the flag raises :class:`StopRequested`, a subclass of
``KeyboardInterrupt``, so the engine's job runner treats a cooperative stop
exactly like a SIGINT interrupt (abort, keep the partial output), without
any signal being sent.
"""

from __future__ import annotations

import threading


class StopRequested(KeyboardInterrupt):
    """Generation was stopped by :meth:`StopFlag.set` (cooperative cancel)."""


class StopFlag:
    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def check(self) -> None:
        """Raise :class:`StopRequested` if a stop was requested."""
        if self._event.is_set():
            self._event.clear()
            raise StopRequested("cooperative stop requested")
