"""JSON schemas of requests, checked in a worker process with a time limit.

``jsonschema``'s ``check_schema`` is slow and, for some schemas, quadratic: ``{"type": [0, "a", 1, ...]}`` makes
its ``uniqueItems`` check compare every pair (3.5 s at 2,000 items on the 2-core machine, hours within the body
limit), and an ordinary 2,000-property schema took 3.6 s there. In a thread it would still hold the GIL, so the
event loop (deadline timers, the token stream) ran 30-100 ms late meanwhile (docs/event-loop.md). Here it runs in
a process of its own: the loop only waits on a future. A check that takes longer than ``time_limit_s`` is a 400
(the worker is killed and a new one started for the next check); a schema longer than ``max_chars`` is refused
before any check.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

log = logging.getLogger("llmsup.web")

DEFAULT_TIME_LIMIT_S = 2.0
DEFAULT_MAX_CHARS = 200_000


class SchemaTooComplex(Exception):
    """The schema was not checked: too long, or its check ran past the time limit."""


def check_schema_text(text: str) -> str | None:
    """In the worker: the schema's first error as text, None when valid (or jsonschema is not installed)."""
    import json

    try:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError
    except ImportError:  # the engine's own check still applies
        return None
    try:
        Draft202012Validator.check_schema(json.loads(text))
    except SchemaError as exc:
        return str(exc.message)
    except (ValueError, TypeError, RecursionError) as exc:  # a schema the checker itself cannot walk
        return str(exc)
    return None


def _ready() -> int:
    """In the worker, once: import the checker before the first timed check; SIGINT left to the server; the
    lowest CPU priority, so that on a busy machine the server's loop and the engines come first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(19)
    check_schema_text("{}")
    return os.getpid()


class SchemaChecker:
    """One worker process (started on first use, replaced after a timeout); checks queue for it."""

    def __init__(self, time_limit_s: float = DEFAULT_TIME_LIMIT_S, max_chars: int = DEFAULT_MAX_CHARS) -> None:
        self.time_limit_s = time_limit_s
        self.max_chars = max_chars
        self._pool: ProcessPoolExecutor | None = None
        self._pid = 0
        self._lock = asyncio.Lock()

    async def check(self, text: str) -> str | None:
        """The schema's error (None: valid); raises :class:`SchemaTooComplex` when it cannot be checked in time."""
        if len(text) > self.max_chars:
            raise SchemaTooComplex(f"JSON schema longer than {self.max_chars} characters")
        async with self._lock:  # one check at a time: the worker's time is the check's own
            pool = await self._started()
            future = asyncio.wrap_future(pool.submit(check_schema_text, text))
            try:
                async with asyncio.timeout(self.time_limit_s):
                    return await future
            except TimeoutError:
                log.warning("a JSON schema check ran past %.1f s: its worker (pid %d) is killed", self.time_limit_s,
                            self._pid)
                self._kill()
                raise SchemaTooComplex(f"JSON schema too complex to check within {self.time_limit_s:g} s") from None
            except BrokenProcessPool:
                self._kill()
                raise SchemaTooComplex("the JSON schema checker died on this schema") from None

    async def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: the server has threads (IPyParallel's client, zmq); a fork of it could inherit a held lock
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            self._pid = await asyncio.wrap_future(self._pool.submit(_ready))
        return self._pool

    def _kill(self) -> None:
        pool, pid, self._pool, self._pid = self._pool, self._pid, None, 0
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker (the app's shutdown)."""
        self._kill()
