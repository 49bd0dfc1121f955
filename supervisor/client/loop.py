"""The sync client's engine room: a private asyncio loop in a daemon thread that runs the async client.

As ipyparallel's client does its I/O in a thread of its own, a blocking call here hands a coroutine to that
loop and waits for its result: the sync client is a thin facade over the async one, sharing every line of its
logic. What a caller sees (progress bars, printed pieces) still happens in the caller's thread. One loop
serves every sync client of a process; it starts at first use (and again in a forked child).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import TypeVar

T = TypeVar("T")
_END = object()  # an async iterator's end, as a value (StopAsyncIteration does not cross a Future well)


async def _awaited(aw: Awaitable[T]) -> T:
    return await aw


async def _next(iterator: AsyncIterator[T]) -> T | object:
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return _END


class LoopThread:
    """An event loop running for ever in a daemon thread; ``run`` / ``iterate`` / ``enter`` block on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="llmsup-client-loop", daemon=True)
        self.thread.start()

    def run(self, aw: Awaitable[T]) -> T:
        """Run ``aw`` on the loop and return its result; an interrupt here (Ctrl-C) cancels it there."""
        if threading.current_thread() is self.thread:
            if inspect.iscoroutine(aw):
                aw.close()  # never to be awaited
            raise RuntimeError("the sync llmsup Client was called from its own event loop; use AsyncClient there")
        future = asyncio.run_coroutine_threadsafe(_awaited(aw), self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # no-op when it has finished; else the call stops on the loop too
            raise

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        """Each item of an async iterator, fetched on the loop; closing this generator closes that one."""
        try:
            while (item := self.run(_next(iterator))) is not _END:
                yield item  # type: ignore[misc]  # not _END: a T
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                self.run(aclose())

    @contextmanager
    def enter(self, manager: AbstractAsyncContextManager[T]) -> Iterator[T]:
        """An async context manager, entered and left on the loop; the block runs in the caller's thread."""
        value = self.run(manager.__aenter__())
        try:
            yield value
        except BaseException as exc:
            if not self.run(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self.run(manager.__aexit__(None, None, None))


_shared: dict[int, LoopThread] = {}
_shared_lock = threading.Lock()


def shared_loop() -> LoopThread:
    """This process's loop thread (a forked child gets its own: the parent's thread does not run there)."""
    with _shared_lock:
        pid = os.getpid()
        if pid not in _shared:
            _shared.clear()
            _shared[pid] = LoopThread()
        return _shared[pid]

