"""Listing jobs without stalling the event loop that runs the deadline timers, and the cost of live counts.

1. A page of ``--jobs`` jobs whose prompts have ``--prompt-chars`` characters, listed and rendered to JSON
   (what ``GET /v1/jobs?limit=N`` does) on the event loop (``Supervisor.list`` + pydantic, as before) and off
   it (``web/listing.py``: read + parse + render in a worker thread). Measured: the request's duration and the
   loop's worst stall, seen by a 1 ms timer (how late a deadline timer would fire meanwhile).
2. ``/v1/events`` counts over ``--rows`` stored jobs: one ``GROUP BY status`` per subscriber per tick (as
   before) against one indexed count per status, shared by all subscribers of a tick.

    .venv/bin/python -m bench.bench_listing [--jobs 1000] [--prompt-chars 50000] [--rows 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.stats import table
from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings
from llmsup.supervisor.store import SQLiteStore
from llmsup.web.listing import list_jobs, off_loop, render_page
from llmsup.web.schemas import JobList, JobOut


async def worst_stall(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(duration of ``work``, the longest a 1 ms timer waited past its time meanwhile), in ms."""
    stalls: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not done.is_set():
            due = loop.time() + 0.001
            await asyncio.sleep(0.001)
            stalls.append(loop.time() - due)

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    await work()
    took = time.perf_counter() - t0
    done.set()
    await tick
    return took * 1000, max(stalls) * 1000


def render(jobs: list[Job]) -> bytes:
    return JobList(jobs=[JobOut.of(j) for j in jobs], count=len(jobs)).model_dump_json().encode()


async def listing(tmp: Path, jobs: int, chars: int, repeats: int) -> None:
    store = SQLiteStore(tmp / "big.sqlite")
    for i in range(jobs):
        store.add(Job(prompt=f"{i} " + "x" * chars))
    sup = Supervisor(Settings(run_dir=tmp / "run", engines=0), store=store)

    async def on_loop() -> bytes:
        return render(sup.list(None, limit=jobs))

    async def off() -> bytes:
        page = await list_jobs(sup, None, limit=jobs)
        return await off_loop(lambda: render_page((JobOut.of(j) for j in page), count=len(page)))

    rows = []
    for name, work in (("on the event loop (before)", on_loop), ("off the loop (web/listing.py)", off)):
        results = [await worst_stall(work) for _ in range(repeats)]
        rows.append([name, repeats, min(r[0] for r in results), max(r[0] for r in results),
                     min(r[1] for r in results), max(r[1] for r in results)])
    store.close()
    print(table(f"GET /v1/jobs?limit={jobs}, prompts of {chars} characters", [
        "where", "runs", "request min ms", "request max ms", "loop stall min ms", "loop stall max ms"], rows))


def counts(tmp: Path, rows: int, subscribers: int) -> None:
    store = SQLiteStore(tmp / "many.sqlite")
    db = store._db
    db.execute("BEGIN")
    statuses = [s.value for s in JobStatus]
    for i in range(rows):
        job = Job(prompt="x", seq=i + 1)
        db.execute("INSERT INTO jobs (id, seq, status, priority, not_before, expires_at, owner, data)"
                   " VALUES (?, ?, ?, 0, 0, 0, NULL, ?)", (job.id, job.seq, statuses[i % len(statuses)], "{}"))
    db.execute("COMMIT")

    def timed(fn: Callable[[], object], n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1000

    group_by = timed(lambda: db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall(), 20)
    indexed = timed(store.counts, 20)
    store.close()
    print(table(f"/v1/events counts over {rows} jobs, {subscribers} subscribers, one tick", [
        "how", "one computation ms", "per tick ms"], [
        ["GROUP BY status, per subscriber (before)", group_by, group_by * subscribers],
        ["indexed count per status, shared (web/listing.py)", indexed, indexed],
    ]))


async def main(jobs: int, chars: int, rows: int, repeats: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="llmsup-bench-listing-"))
    try:
        await listing(tmp, jobs, chars, repeats)
        counts(tmp, rows, subscribers=100)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--prompt-chars", type=int, default=50_000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.prompt_chars, args.rows, args.repeats))
