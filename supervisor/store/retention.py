"""Retention of finished jobs: ``retain_s`` (age since a job ended) and ``retain_jobs`` (how many to keep).

Only terminal jobs are ever deleted (the store's ``prune`` checks the status itself); queued and running
jobs stay whatever their age. Pruning runs in the background in small batches, yielding to the event loop
between batches, so a backlog of a million old jobs never holds up a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable

from llmsup.supervisor.settings import Settings
from llmsup.supervisor.store import PRUNE_BATCH, JobStore

log = logging.getLogger("llmsup.retention")
PRUNE_EVERY_S = 30.0


def enabled(settings: Settings) -> bool:
    return settings.retain_s > 0 or settings.retain_jobs > 0


def prune_once(store: JobStore, settings: Settings, now: float, limit: int = PRUNE_BATCH) -> int:
    """One batch: finished jobs that ended before ``now - retain_s``, and those beyond the newest ``retain_jobs``."""
    finished_before = now - settings.retain_s if settings.retain_s > 0 else None
    keep = settings.retain_jobs if settings.retain_jobs > 0 else None
    if finished_before is None and keep is None:
        return 0
    return store.prune(finished_before, keep, limit)


async def prune_all(store: JobStore, settings: Settings, now: float, limit: int = PRUNE_BATCH) -> int:
    """Batches until nothing is due; returns how many jobs were deleted."""
    total = 0
    while True:
        deleted = prune_once(store, settings, now, limit)
        total += deleted
        if deleted < limit:
            return total
        await asyncio.sleep(0)  # let deadlines, tokens and requests through between batches


async def prune_forever(store: JobStore, settings: Settings, clock: Callable[[], float],
                        every_s: float | None = None) -> None:
    """Prune now, then every ``every_s`` (default PRUNE_EVERY_S), until cancelled."""
    while True:
        try:
            deleted = await prune_all(store, settings, clock())
        except sqlite3.Error as exc:  # a locked or full disk: try again at the next round
            log.warning("pruning finished jobs failed: %s", exc)
        else:
            if deleted:
                log.info("retention: deleted %d finished jobs (retain_s=%s, retain_jobs=%s)", deleted,
                         settings.retain_s, settings.retain_jobs)
        await asyncio.sleep(every_s if every_s is not None else PRUNE_EVERY_S)
