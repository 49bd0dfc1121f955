"""REST front end under load, side by side with the Python API (sim backend, 0 s/token, 2 engines).

- admission: ``POST /v1/jobs`` -> 202, 200 concurrent clients (httpx async, one connection each), against
  ``Supervisor.submit`` called by 200 concurrent asyncio tasks in the supervisor's own process;
- end to end, empty job (max_tokens=1): ``POST /v1/completions`` (OpenAI route, waits for the result) against
  ``submit`` + ``wait``.

Clients and server share this machine's cores: the REST figures include the client's own CPU time.

    .venv/bin/python -m bench.bench_rest [--clients 200] [--requests 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from bench.bench_core import ServeProcess, settings
from bench.stats import summary_ms, table
from supervisor.jobs import JobStatus
from supervisor.requests import JobRequest
from supervisor.service import Supervisor

HEADERS = ["path", "clients", "requests", "req/s", "p50 ms", "p99 ms", "max ms"]


async def drive(clients: int, total: int, one: Callable[[], Awaitable[None]]) -> tuple[list[float], float]:
    """``clients`` concurrent loops share ``total`` calls of ``one``; returns latencies and calls per second."""
    latencies: list[float] = []
    left = total

    async def loop() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return latencies, len(latencies) / (time.perf_counter() - t0)


def row(name: str, clients: int, latencies: list[float], rate: float) -> list[object]:
    s = summary_ms(latencies)
    return [name, clients, s["n"], rate, s["p50"], s["p99"], s["max"]]


async def drained(http: httpx.AsyncClient, timeout: float = 300) -> None:
    """Wait until the server's queue is empty and nothing runs (between phases)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = (await http.get("/metrics")).text
        depth = float(re.search(r"^llmsup_queue_depth (\S+)", text, re.M).group(1))
        running = float(re.search(r"^llmsup_running_jobs (\S+)", text, re.M).group(1))
        if depth == 0 and running == 0:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("the server's queue did not drain")


async def rest(url: str, clients: int, total: int) -> list[list[object]]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        async def submit() -> None:
            resp = await http.post("/v1/jobs", json={"prompt": "x", "max_tokens": 1})
            assert resp.status_code == 202, resp.text

        async def complete() -> None:
            resp = await http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
            assert resp.status_code == 200 and resp.json()["choices"][0]["finish_reason"] == "length", resp.text

        await drive(clients, clients, submit)  # warm-up: open every connection
        await drained(http)
        admission = row("REST POST /v1/jobs (admission)", clients, *await drive(clients, total, submit))
        await drained(http)
        e2e = row("REST POST /v1/completions (end to end)", clients, *await drive(clients, total // 2, complete))
        await drained(http)
    return [admission, e2e]


async def python_api(run_dir: Path, clients: int, total: int) -> list[list[object]]:
    sup = Supervisor(settings(run_dir, engines=2, queue_max=100_000))
    await sup.start()
    try:
        async def submit() -> None:
            sup.submit(JobRequest("x", max_tokens=1))
            await asyncio.sleep(0)  # let the other clients and the dispatcher run, as a server would

        async def complete() -> None:
            await sup.wait(sup.submit(JobRequest("x", max_tokens=1)).job.id, 120)

        admission = row("Python Supervisor.submit (admission)", clients, *await drive(clients, total, submit))
        await wait_idle(sup)
        e2e = row("Python submit + wait (end to end)", clients, *await drive(clients, total // 2, complete))
        return [admission, e2e]
    finally:
        await sup.stop()


async def wait_idle(sup: Supervisor, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        counts = sup.store.counts()
        if counts[JobStatus.QUEUED] == 0 and counts[JobStatus.RUNNING] == 0:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the supervisor's queue did not drain")


async def main(clients: int, total: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="llmsup-bench-rest-"))
    try:
        py_rows = await python_api(tmp / "py", clients, total)
        server = ServeProcess(tmp / "rest", engines=2)
        try:
            rest_rows = await rest(server.url, clients, total)
        finally:
            server.stop()
        rows = [py_rows[0], rest_rows[0], py_rows[1], rest_rows[1]]
        print(table(f"REST vs Python API, {clients} concurrent clients, empty jobs (sim, max_tokens=1), 2 engines",
                    HEADERS, rows))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=4000, help="admission requests (end to end: half)")
    args = parser.parse_args()
    asyncio.run(main(args.clients, args.requests))
