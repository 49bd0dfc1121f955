"""Pipelines: what a step costs over a plain job, and pipelines per second (``llmsup serve``, sim at 0 s/token).

One server with a sim pool of 2 engines and a pool of 1 ``backend=python`` engine running a registered ``echo``
function. Latency, one client at a time (submit, then long-poll until it ended): a plain job (``POST /v1/jobs``), a
1-step pipeline (the same prompt as its one step), a 1-step function pipeline (``fn: echo``), a 3-step chain, a map
of 10 items and its merge. Throughput, ``--clients`` concurrent clients each doing the same in a loop. Celery (chain,
chord) and Ray (task graph) equivalents of the chain and the map run when those packages are installed, else their
rows say which is missing (``bench/pipeline_peers.py``).

    .venv/bin/python -m bench.bench_pipelines [--runs 200] [--clients 16] [--total 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench.pipeline_peers import peer_rows
from bench.servers import loadavg
from bench.stats import summary_ms, table
from tests.support import live

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "expired"}
HEADERS = ["what", "clients", "n", "p50 ms", "p99 ms", "per s"]
One = Callable[[httpx.AsyncClient], Awaitable[None]]
FAN = 10  # items of the map case (and of Celery's chord, Ray's fan-out)


def echo(value: Any) -> Any:
    """The function step's function: its input back."""
    return value


async def plain_job(http: httpx.AsyncClient) -> None:
    job = (await http.post("/v1/jobs", json={"prompt": "x", "max_tokens": 1})).json()
    while job["status"] not in TERMINAL:
        job = (await http.get(f"/v1/jobs/{job['id']}", params={"wait_s": 10})).json()
    assert job["status"] == "succeeded", job


async def pipeline(http: httpx.AsyncClient, steps: list[dict[str, Any]]) -> None:
    resp = await http.post("/v1/pipelines", json={"steps": steps})
    assert resp.status_code == 202, resp.text
    p = resp.json()
    while p["status"] not in TERMINAL:
        p = (await http.get(f"/v1/pipelines/{p['id']}", params={"wait_s": 10})).json()
    assert p["status"] == "succeeded", p


CASES: list[tuple[str, One]] = [
    ("plain job", plain_job),
    ("1-step pipeline", lambda http: pipeline(http, [{"name": "a", "prompt": "x", "max_tokens": 1}])),
    ("1-step function pipeline", lambda http: pipeline(http, [{"name": "a", "fn": "echo", "prompt": "x"}])),
    ("3-step chain pipeline", lambda http: pipeline(http, [
        {"name": "a", "prompt": "x", "max_tokens": 1},
        {"name": "b", "prompt": "{{a}}", "after": ["a"], "max_tokens": 1},
        {"name": "c", "prompt": "{{b}}", "after": ["b"], "max_tokens": 1}])),
    (f"map of {FAN} + merge pipeline", lambda http: pipeline(http, [
        {"name": "m", "prompt": "{{item}}", "map": [str(i) for i in range(FAN)], "max_tokens": 1},
        {"name": "merge", "prompt": "{{m}}", "after": ["m"], "max_tokens": 1}])),
]


async def measure(http: httpx.AsyncClient, one: One, clients: int, total: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    left = total

    async def loop() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            await one(http)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return latencies, len(latencies) / (time.perf_counter() - t0)


def row(name: str, clients: int, latencies: list[float], rate: float) -> list[object]:
    s = summary_ms(latencies)
    return [name, clients, s["n"], s["p50"], s["p99"], rate]


def store_writes(tmp: Path, n: int = 500) -> list[list[object]]:
    """A running pipeline's record written ``n`` times: as the store does (no fsync between its creation and its
    end), against an fsync on every write (``synchronous=FULL``)."""
    from dataclasses import replace

    from llmsup.supervisor.pipelines.records import Pipeline, PipelineStatus, StepRecord
    from llmsup.supervisor.pipelines.spec import PipelineSpec, StepSpec
    from llmsup.supervisor.pipelines.store import SQLitePipelineStore

    rows: list[list[object]] = []
    for name, full in (("store writes between (NORMAL)", False), ("every write fsynced (FULL)", True)):
        store = SQLitePipelineStore(tmp / f"{full}.sqlite")
        steps = tuple(StepSpec(f"s{i}", "x" * 200) for i in range(8))
        p = store.add(Pipeline(PipelineSpec(steps), steps=tuple(StepRecord(s.name) for s in steps)))
        running = replace(p, status=PipelineStatus.RUNNING)
        if full:
            store._db.execute("PRAGMA synchronous=FULL")
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            store.put(running)
            times.append(time.perf_counter() - t0)
        store.close()
        s = summary_ms(times)
        rows.append([name, 1, s["n"], s["p50"], s["p99"], n / sum(times)])
    return rows


async def main(runs: int, clients: int, total: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="llmsup-bench-pipelines-"))
    writes = store_writes(tmp)
    env = dict(os.environ, LLMSUP_SIM_TOKEN_S="0", LLMSUP_QUEUE_MAX="100000",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])))
    args = ["--log-level", "warning", "--pool", "name=sim,backend=sim,engines=2",
            "--pool", "name=io,backend=python,engines=1", "--function", "echo=bench.bench_pipelines:echo"]
    server = live.start_llmsup(tmp / "run", tmp, env, engines=3, args=args, log_name="bench-pipelines")
    try:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=server.auth, limits=limits) as http:
            for _, one in CASES:  # warm-up: connections, first imports
                await measure(http, one, 1, 10)
            seq = [row(name, 1, *await measure(http, one, 1, runs)) for name, one in CASES]
            par = [row(name, clients, *await measure(http, one, clients, total)) for name, one in CASES]
    finally:
        live.stop(server)
        shutil.rmtree(tmp, ignore_errors=True)
    base = seq[0][3]
    print(table(f"Pipelines over plain jobs (sim 0 s/token, 2 sim engines + 1 python engine; load {loadavg()})",
                HEADERS, [*seq, *par]))
    print(table(f"The same shapes on Celery and Ray, in this process (load {loadavg()})", HEADERS,
                peer_rows(runs, clients, total, FAN)))
    print(table("A pipeline record's write (SQLite, WAL, the run directory's disk)", HEADERS, writes))
    for name, _, _, p50, _, _ in seq[1:]:
        print(f"overhead of {name} over a plain job (p50, one client): {float(str(p50)) - float(str(base)):.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="sequential runs of each case")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--total", type=int, default=400, help="runs of each case with --clients clients")
    a = parser.parse_args()
    asyncio.run(main(a.runs, a.clients, a.total))
