"""What durable terminal writes cost: the job store's ``synchronous`` modes side by side, in one run.

- ``normal``: WAL commits are not fsynced (the previous default; a power loss can undo the last commits);
- ``full``: every commit fsyncs the WAL (submit, start, end of every job);
- ``terminal`` (the default): only a job's terminal transition is committed with ``synchronous=FULL``.

Two measures, modes interleaved round by round (ABC, BCA, CAB, ...) so that load changes hit each alike:

1. the store alone: one job's three writes (submit, running, terminal), per job;
2. a real local cluster (sim backend, 0 s/token, 2 engines): ``Supervisor.submit`` latency of a burst of
   empty jobs, the burst's jobs/s (first submit -> last job settled), and submit -> result one job at a time.

The store lives in a temporary directory (``--dir``, default the system's), i.e. on that file system's disk.

    .venv/bin/python -m bench.bench_durability [--jobs 400] [--rounds 3] [--dir /path/on/the/disk]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.bench_core import settings
from bench.stats import pct, summary_ms, table
from llmsup.supervisor.core.jobs import EngineRef, Job, JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.core.transitions import transition
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.store import SQLiteStore, SyncMode

MODES: tuple[SyncMode, ...] = ("normal", "full", "terminal")


def store_writes(store: SQLiteStore, jobs: int) -> list[float]:
    """Per job: add (queued) + put (running) + put (succeeded), as the supervisor writes them."""
    out = []
    engine = EngineRef(0, "h", 1, "cpu")
    for _ in range(jobs):
        t0 = time.perf_counter()
        job = store.add(Job(prompt="x", created_at=time.time()))
        running = transition(job, JobStatus.RUNNING, time.time(), engine=engine)
        store.put(running)
        store.put(transition(running, JobStatus.SUCCEEDED, time.time()))
        out.append(time.perf_counter() - t0)
    return out


async def burst(sup: Supervisor, jobs: int) -> tuple[list[float], float]:
    submits = []
    t0 = time.perf_counter()
    ids = []
    for _ in range(jobs):
        s0 = time.perf_counter()
        ids.append(sup.submit(JobRequest("x", max_tokens=1)).job.id)
        submits.append(time.perf_counter() - s0)
    for job_id in ids:
        job = await sup.wait(job_id, 120)
        assert job.status is JobStatus.SUCCEEDED, job
    return submits, jobs / (time.perf_counter() - t0)


async def one_at_a_time(sup: Supervisor, jobs: int) -> list[float]:
    out = []
    for _ in range(jobs):
        t0 = time.perf_counter()
        job = await sup.wait(sup.submit(JobRequest("x", max_tokens=1)).job.id, 30)
        assert job.status is JobStatus.SUCCEEDED, job
        out.append(time.perf_counter() - t0)
    return out


def rotated(round_no: int) -> list[SyncMode]:
    k = round_no % len(MODES)
    return [*MODES[k:], *MODES[:k]]


async def main(jobs: int, rounds: int, where: str | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="llmsup-bench-durability-", dir=where))
    try:
        alone: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(rounds):
            for mode in rotated(r):
                store = SQLiteStore(tmp / f"alone-{mode}-{r}.sqlite", sync=mode)
                alone[mode] += store_writes(store, jobs)
                store.close()
        heads = ["synchronous", "jobs", "p50 ms", "p99 ms", "max ms", "jobs/s (1 writer)"]
        print(table("Store alone: submit + running + succeeded writes of one job", heads, [
            [m, len(v), summary_ms(v)["p50"], summary_ms(v)["p99"], summary_ms(v)["max"], len(v) / sum(v)]
            for m, v in alone.items()]))

        store = SQLiteStore(tmp / "cluster.sqlite")
        sup = Supervisor(settings(tmp / "run", engines=2, queue_max=100_000), store=store)
        await sup.start()
        submits: dict[str, list[float]] = {m: [] for m in MODES}
        rates: dict[str, list[float]] = {m: [] for m in MODES}
        trips: dict[str, list[float]] = {m: [] for m in MODES}
        try:
            await one_at_a_time(sup, 30)  # warm-up
            for r in range(rounds):
                for mode in rotated(r):
                    store.set_sync(mode)
                    lat, rate = await burst(sup, jobs)
                    submits[mode] += lat
                    rates[mode].append(rate)
                    trips[mode] += await one_at_a_time(sup, jobs // 4)
        finally:
            await sup.stop()
        heads = ["synchronous", "burst jobs/s (median of rounds)", "submit p50 ms", "submit p99 ms",
                 "submit -> result p50 ms", "submit -> result p99 ms"]
        print(table(f"Real cluster (sim, 2 engines): {rounds} rounds x {jobs} jobs a burst, {jobs // 4} one at a time",
                    heads, [[m, pct(rates[m], 0.5), summary_ms(submits[m])["p50"], summary_ms(submits[m])["p99"],
                             summary_ms(trips[m])["p50"], summary_ms(trips[m])["p99"]] for m in MODES]))
        print(f"store directory: {tmp} ({os.statvfs(tmp).f_bsize}-byte blocks); load {os.getloadavg()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the stores are written (default: the system's temp dir)")
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.rounds, args.dir))
