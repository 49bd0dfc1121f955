"""Soak: 10,000 short jobs through REST with 32 SSE subscribers attached, retention on. Per window of jobs:
submit and list latencies, the server's RSS, the store's size on disk — all should stay flat. With several
subscriber counts (``--subscribers 0,32``, the default) each runs on a fresh server in turn, and a last table
puts them side by side with the ratio to the first.

    .venv/bin/python -m bench.bench_soak [--jobs 10000] [--subscribers 0,32] [--retain-jobs 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench.stats import pct, table
from tests.support import live


def store_mb(run_dir: Path) -> float:
    return sum(p.stat().st_size for p in run_dir.glob("jobs.sqlite*")) / 1e6


def tree_rss_mb(pid: int) -> float:
    """The supervisor process (uvicorn + supervisor) alone: engines and the controller are other processes."""
    return psutil.Process(pid).memory_info().rss / 1e6


async def subscriber(url: str, stop: asyncio.Event, counts: list[int], i: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=None) as http:
        while not stop.is_set():
            try:
                async with http.stream("GET", "/v1/events") as resp:
                    async for line in resp.aiter_lines():
                        if line.startswith("event:"):
                            counts[i] += 1
                        if stop.is_set():
                            return
            except httpx.HTTPError:
                await asyncio.sleep(0.2)


async def soak(url: str, run_dir: Path, pid: int, jobs: int, subscribers: int, window: int) -> list[list[object]]:
    stop = asyncio.Event()
    counts = [0] * subscribers
    subs = [asyncio.ensure_future(subscriber(url, stop, counts, i)) for i in range(subscribers)]
    rows: list[list[object]] = []
    sem = asyncio.Semaphore(32)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for start in range(0, jobs, window):
            submit_s: list[float] = []
            list_s: list[float] = []
            ids: list[str] = []

            async def one(n: int, submit_s: list[float] = submit_s, list_s: list[float] = list_s,
                          ids: list[str] = ids) -> None:
                async with sem:
                    t0 = time.perf_counter()
                    resp = await http.post("/v1/jobs", json={"prompt": f"soak {n}", "max_tokens": 2})
                    submit_s.append(time.perf_counter() - t0)
                    if resp.status_code == 429:
                        await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                        resp = await http.post("/v1/jobs", json={"prompt": f"soak {n}", "max_tokens": 2})
                    resp.raise_for_status()
                    ids.append(resp.json()["id"])
                    if n % 10 == 0:
                        t0 = time.perf_counter()
                        (await http.get("/v1/jobs", params={"limit": 100})).raise_for_status()
                        list_s.append(time.perf_counter() - t0)

            t_window = time.perf_counter()
            await asyncio.gather(*(one(n) for n in range(start, min(jobs, start + window))))
            for job_id in ids[-32:]:  # the window is done when its last jobs are
                await http.get(f"/v1/jobs/{job_id}", params={"wait_s": 30})
            elapsed = time.perf_counter() - t_window
            ms = [v * 1000 for v in submit_s]
            lms = [v * 1000 for v in list_s]
            rows.append([start + len(ids), round(len(ids) / elapsed), round(pct(ms, 0.5), 1), round(pct(ms, 0.99), 1),
                         round(pct(lms, 0.5), 1), round(pct(lms, 0.99), 1), round(tree_rss_mb(pid), 1),
                         round(store_mb(run_dir), 1), sum(counts)])
            print(rows[-1], flush=True)
    stop.set()
    for s in subs:
        s.cancel()
    await asyncio.gather(*subs, return_exceptions=True)
    return rows


def run_one(jobs: int, subscribers: int, retain_jobs: int) -> list[list[object]]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {"LLMSUP_RETAIN_JOBS": str(retain_jobs), "LLMSUP_SIM_TOKEN_S": "0", "LLMSUP_SSE_MAX_TOTAL": "1000",
               "LLMSUP_SSE_MAX_PER_OWNER": "1000", "LLMSUP_OWNER_QUEUE_MAX": "100000"}
        server = live.start_server(Path(tmp), engines=2, env=env)
        try:
            rss0 = tree_rss_mb(server.proc.pid)
            rows = asyncio.run(soak(server.url, server.run_dir, server.proc.pid, jobs, subscribers, max(1, jobs // 10)))
        finally:
            live.stop(server)
    print(table(f"Soak: {jobs} jobs through REST, {subscribers} SSE subscribers on /v1/events, retain_jobs={retain_jobs} "
                f"(server RSS at start {rss0:.1f} MB)",
                ["jobs", "jobs/s", "submit p50 ms", "submit p99 ms", "list p50 ms", "list p99 ms", "server RSS MB",
                 "store MB", "SSE events read"], rows), flush=True)
    return rows


def main(jobs: int, subscriber_counts: list[int], retain_jobs: int) -> None:
    results = {n: run_one(jobs, n, retain_jobs) for n in subscriber_counts}
    if len(results) < 2:
        return
    base = results[subscriber_counts[0]]

    def median(rows: list[list[object]], col: int) -> float:
        return pct([float(r[col]) for r in rows], 0.5)

    summary = []
    for n, rows in results.items():
        rate, p50 = median(rows, 1), median(rows, 2)
        summary.append([n, rate, p50, median(rows, 3), rows[-1][6], f"{rate / median(base, 1):.2f}x",
                        f"{p50 / median(base, 2):.2f}x"])
    print(table(f"Soak side by side: {jobs} jobs each, medians over the windows",
                ["subscribers", "jobs/s", "submit p50 ms", "submit p99 ms", "RSS at end MB",
                 f"jobs/s vs {subscriber_counts[0]}", f"submit p50 vs {subscriber_counts[0]}"], summary))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--subscribers", default="0,32", help="comma-separated subscriber counts, run in turn")
    parser.add_argument("--retain-jobs", type=int, default=2000)
    a = parser.parse_args()
    main(a.jobs, [int(x) for x in a.subscribers.split(",")], a.retain_jobs)
