"""Throughput of short jobs through one supervisor: one table, side by side.

A real ``llmsup serve --backend sim --sim-token-s 0 --engines 2 --standby 0`` (engines with 1 slot, then with 64),
loaded by an async generator in this process (``bench/httpload.py``, over ``bench/rawhttp.py``'s lean HTTP client, or
httpx with ``--client httpx``) on the same cores, one-token jobs:

- closed loop: ``clients`` (1, 64, 256) each sending one job after another for ``--seconds``, through
  ``POST /v1/completions`` and through ``POST /v1/jobs`` + ``GET /v1/jobs/{id}?wait_s``;
- drain: 250 and 10,000 jobs submitted at once (64 connections), the time until the last is done;
- the peers' dispatch workload: 20 warm-up, 300 sequential round trips (``POST /v1/completions``), then 2,000
  submitted together and every result fetched (64 connections);
- deadlines under load (64-slot engines): jobs sent at 80% of the 64-client rate measured just before, one in 50 a
  runaway with a 0.5 s deadline; from each runaway's deadline to its end (its slot free) and to the next start on
  its engine;
- raw IPyParallel ``apply`` on the same engines (64 in flight), the rate llmsup's 1-slot engines are held to;
- Celery and Ray: listed as missing unless installed.

Columns: jobs/s, latency p50/p99, and CPU per job of the supervisor process, of the whole server process tree
(controller, engines, nannies) and of the load generator (this process).

    .venv/bin/python -m bench.bench_throughput [--seconds 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import ipyparallel as ipp

from bench import httpload
from bench.httpload import (
    RETRIES,
    CpuMeter,
    Http,
    Route,
    client,
    closed_loop,
    fetch_all,
    one_job,
    open_loop,
    records,
    submit_batch,
    submit_many,
)
from bench.servers import loadavg
from bench.stats import summary_ms, table
from llmsup.engines import runtime
from tests.support import live

HEADERS = ["workload", "engines", "route", "clients", "jobs", "jobs/s", "p50 ms", "p99 ms",
           "supervisor CPU ms/job", "tree CPU ms/job", "load generator CPU ms/job"]
ROUTES: dict[Route, str] = {"completions": "POST /v1/completions", "jobs": "POST /v1/jobs + GET ?wait_s"}
SERVER_ENV = {"LLMSUP_SIM_TOKEN_S": "0", "LLMSUP_QUEUE_MAX": "100000", "LLMSUP_OWNER_QUEUE_MAX": "0",
              "LLMSUP_REQUIRE_API_KEYS": "off", "LLMSUP_DEADLINE_S": "60"}


class Server:
    """``llmsup serve`` on the sim backend with ``slots`` slots per engine, and a CPU meter on its processes."""

    def __init__(self, base: Path, slots: int) -> None:
        self.slots = slots
        env = {**os.environ, **SERVER_ENV, "IPYTHONDIR": str(base / f"ipython-{slots}")}
        args = ["--log-level", "warning", "--standby", "0", "--slots-per-engine", str(slots)]
        self.live = live.start_llmsup(base / f"run-{slots}", base, env, engines=2, args=args,
                                      log_name=f"serve-{slots}")
        self.url = self.live.url
        self.label = f"{slots} slot" + ("s" if slots > 1 else "")

    def meter(self) -> CpuMeter:
        return CpuMeter(self.live.proc.pid, lambda: live.tagged_processes(self.live.tag))

    def stop(self) -> None:
        live.stop(self.live)


def cpu_cells(meter: CpuMeter, jobs: int) -> list[object]:
    if not jobs:
        return ["", "", ""]
    return [meter.supervisor * 1000 / jobs, meter.whole * 1000 / jobs, meter.generator * 1000 / jobs]


async def idle(http: Http, timeout: float = 600) -> None:
    """Until the server's queue is empty and nothing runs (polled on /metrics)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = (await http.get("/metrics")).text
        depth = float(re.search(r"^llmsup_queue_depth (\S+)", text, re.M).group(1))  # type: ignore[union-attr]
        running = float(re.search(r"^llmsup_running_jobs (\S+)", text, re.M).group(1))  # type: ignore[union-attr]
        if depth == 0 and running == 0:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("the server's queue did not drain")


async def loop_rows(server: Server, seconds: float, clients_list: list[int]) -> list[list[object]]:
    rows: list[list[object]] = []
    for route in ROUTES:
        for clients in clients_list:
            async with client(server.url, clients) as http:
                await asyncio.gather(*(one_job(http, route) for _ in range(clients)))  # every connection open
                meter = server.meter()
                meter.start()
                result = await closed_loop(http, route, clients, seconds)
                meter.stop()
                await idle(http)
            s = summary_ms(result.latencies)
            rows.append(["closed loop", server.label, ROUTES[route], clients, s["n"], result.rate, s["p50"], s["p99"],
                         *cpu_cells(meter, s["n"])])
    return rows


async def drain_rows(server: Server, sizes: list[int], batch: bool) -> list[list[object]]:
    rows: list[list[object]] = []
    for n in sizes:
        async with client(server.url, 64) as http:
            meter = server.meter()
            meter.start()
            t0 = time.perf_counter()
            if batch:
                await submit_batch(http, n, 1000)
            else:
                await submit_many(http, n, 64)
            submitted = time.perf_counter() - t0
            await idle(http)
            elapsed = time.perf_counter() - t0
            meter.stop()
        route = "POST /v1/jobs:batch" if batch else "POST /v1/jobs"
        rows.append([f"drain {n:,} queued (submits {n / submitted:.0f}/s)", server.label, route, 64, n,
                     n / elapsed, "", "", *cpu_cells(meter, n)])
    return rows


async def peer_rows(server: Server) -> list[list[object]]:
    async with client(server.url, 64) as http:
        for _ in range(20):
            await one_job(http, "completions")
        trips = []
        for _ in range(300):
            t0 = time.perf_counter()
            await one_job(http, "completions")
            trips.append(time.perf_counter() - t0)
        s = summary_ms(trips)
        meter = server.meter()
        meter.start()
        t0 = time.perf_counter()
        ids = await submit_many(http, 2000, 64)
        await fetch_all(http, ids, 64)
        elapsed = time.perf_counter() - t0
        meter.stop()
    return [["peers: round trip, 300 sequential", server.label, ROUTES["completions"], 1, 300, 300 / sum(trips),
             s["p50"], s["p99"], "", "", ""],
            ["peers: 2,000 pipelined", server.label, "POST /v1/jobs, then GET ?wait_s", 64, 2000, 2000 / elapsed,
             "", "", *cpu_cells(meter, 2000)]]


async def raw_ipp_row(server: Server, seconds: float, in_flight: int = 64) -> list[object]:
    """IPyParallel's own rate on the server's engines: ``apply(ping)`` round robin, ``in_flight`` outstanding."""
    security = server.live.run_dir / "ipython" / "profile_llmsup" / "security" / "ipcontroller-llmsup-client.json"
    rc = ipp.Client(str(security))
    try:
        views = [rc[eid] for eid in rc.ids]
        count = 0
        end = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            nonlocal count
            while time.perf_counter() < end:
                await asyncio.wrap_future(views[(count + i) % len(views)].apply_async(runtime.ping))
                count += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(in_flight)))
        rate = count / (time.perf_counter() - t0)
    finally:
        rc.close()
    return ["raw IPyParallel apply (reference)", server.label, "Client.apply_async", in_flight, count, rate,
            "", "", "", "", ""]


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


async def deadline_rows(server: Server, max_rate: float, seconds: float, runaway_every: int = 50,
                        deadline_s: float = 0.5) -> list[list[object]]:
    """Runaways mixed into a flood at 80% of ``max_rate``: how late their slots come free and are used again."""
    rate = 0.8 * max_rate
    async with client(server.url, 256) as http:
        meter = server.meter()
        meter.start()
        short, runaways = await open_loop(http, rate, seconds, runaway_every, deadline_s)
        done = await records(http, short + runaways, 64)
        meter.stop()
        await idle(http)
    starts: dict[int, list[float]] = {}
    for r in done[:len(short)]:
        assert r["status"] == "succeeded", r
        starts.setdefault(r["engine"]["id"], []).append(_ts(r["started_at"]))
    ended, restarted = [], []
    for r in done[len(short):]:
        assert r["status"] == "timed_out", r
        due = _ts(r["started_at"]) + deadline_s
        ended.append(_ts(r["finished_at"]) - due)
        later = [t for t in starts.get(r["engine"]["id"], []) if t >= _ts(r["finished_at"])]
        if later:
            restarted.append(min(later) - due)
    e, n = summary_ms(ended), summary_ms(restarted)
    label = f"deadlines under load: 1 in {runaway_every} a runaway ({deadline_s:g} s), {rate:.0f} jobs/s offered"
    return [[label + ", deadline -> timed out", server.label, "POST /v1/jobs, then GET ?wait_s", 256,
             len(done), len(done) / seconds, e["p50"], e["p99"], *cpu_cells(meter, len(done))],
            [label + ", deadline -> next start on its engine", server.label, "", "", len(restarted), "",
             n["p50"], n["p99"], "", "", ""]]


def missing_rows() -> list[list[object]]:
    rows: list[list[object]] = []
    for name, module in (("Celery", "celery"), ("Ray", "ray")):
        if importlib.util.find_spec(module) is None:
            rows.append([f"peers: {name}", "", f"missing ({module} not installed)", "", "", "", "", "", "", "", ""])
    return rows


def progress(rows: list[list[object]]) -> list[list[object]]:
    """Rows as they come (to stderr), before the table at the end."""
    for r in rows:
        print(" | ".join(str(round(c, 2) if isinstance(c, float) else c) for c in r), file=sys.stderr, flush=True)
    return rows


async def main(seconds: float, clients: list[int], drains: list[int], batch: bool, slots_list: list[int]) -> None:
    base = Path(tempfile.mkdtemp(prefix="llmsup-bench-throughput-"))
    rows: list[list[object]] = []
    loads = [loadavg()]
    try:
        for slots in slots_list:
            server = Server(base, slots)
            try:
                loops = progress(await loop_rows(server, seconds, clients))
                rows += loops
                if slots > 1:
                    best = max(float(r[5]) for r in loops if r[2] == ROUTES["completions"])  # type: ignore[arg-type]
                    rows += progress(await deadline_rows(server, best, max(seconds, 5.0)))
                if slots > 1:
                    rows += progress(await drain_rows(server, drains, batch=False))
                    if batch:
                        rows += progress(await drain_rows(server, drains, batch=True))
                rows += progress(await peer_rows(server))
                if slots == 1:
                    rows.append(await raw_ipp_row(server, seconds))
                loads.append(loadavg())
            finally:
                server.stop()
        rows += missing_rows()
        print(table(f"One-token jobs, sim backend (0 s/token), 2 engines, {seconds:g} s per closed-loop point; "
                    f"{httpload.CLIENT[0]} client; load average {' -> '.join(loads)}", HEADERS, rows))
        if RETRIES[0]:
            print(f"({RETRIES[0]} requests sent again after a keep-alive connection closed under them)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each closed-loop point")
    parser.add_argument("--clients", type=int, action="append", help="closed-loop clients (repeatable; 1 64 256)")
    parser.add_argument("--drain", type=int, action="append", help="jobs queued at once (repeatable; 250 10000)")
    parser.add_argument("--slots", type=int, action="append", help="slots per engine (repeatable; 1 64)")
    parser.add_argument("--batch", action="store_true", help="drain also through POST /v1/jobs:batch")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw", help="the load generator's HTTP client")
    args = parser.parse_args()
    httpload.CLIENT[0] = args.client
    asyncio.run(main(args.seconds, args.clients or [1, 64, 256], args.drain or [250, 10_000], args.batch,
                     args.slots or [1, 64]))
