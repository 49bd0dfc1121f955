"""REST front end under load, side by side with the Python API (sim backend, 0 s/token, 2 engines).

- admission: ``POST /v1/jobs`` -> 202 from 200 concurrent clients, against ``Supervisor.submit`` called by 200
  concurrent asyncio tasks inside the supervisor's process; then the time until every admitted job finished
  (sustained jobs/s);
- end to end, empty job (max_tokens=1): ``POST /v1/completions`` (OpenAI route, answers when the job is done)
  against ``submit`` + ``wait``.

Clients, server, controller and engines share this machine's cores: REST figures include the client's CPU.
``--client httpx`` (default) is the brief's client; ``--client aiohttp`` is a lighter one (less client CPU).

    .venv/bin/python -m bench.bench_rest [--clients 200] [--requests 4000] [--client httpx|aiohttp]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.bench_core import ServeProcess, settings
from bench.stats import summary_ms, table
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor

HEADERS = ["path", "clients", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "all done, jobs/s"]
Post = Callable[[str, dict[str, Any]], Awaitable[tuple[int, Any]]]
RETRIES = [0]  # requests sent again after the server closed an idle keep-alive connection under them


async def drive(clients: int, total: int, one: Callable[[], Awaitable[float | None]]) -> tuple[list[float], float]:
    """``clients`` concurrent loops share ``total`` calls of ``one``; returns latencies and calls per second.
    ``one`` may return its own latency (the Python API's call, without the loop's turn around)."""
    latencies: list[float] = []
    left = total

    async def loop() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            own = await one()
            latencies.append(own if own is not None else time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return latencies, len(latencies) / (time.perf_counter() - t0)


def row(name: str, clients: int, latencies: list[float], rate: float, done_rate: float | str = "") -> list[object]:
    s = summary_ms(latencies)
    return [name, clients, s["n"], rate, s["p50"], s["p99"], s["max"], done_rate]


@asynccontextmanager
async def http_client(kind: str, url: str, clients: int) -> AsyncIterator[Post]:
    if kind == "aiohttp":
        import aiohttp

        async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=clients)) as session:
            async def post(path: str, body: dict[str, Any]) -> tuple[int, Any]:
                async with session.post(path, json=body) as resp:
                    return resp.status, await resp.json()

            yield post
        return
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=300)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        async def post(path: str, body: dict[str, Any]) -> tuple[int, Any]:
            try:
                resp = await http.post(path, json=body)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                # uvicorn closes a connection idle for 5 s; a client starved of CPU for that long races it
                RETRIES[0] += 1
                resp = await http.post(path, json=body)
            return resp.status_code, resp.json()

        yield post


async def server_idle(url: str, timeout: float = 600) -> None:
    """Wait until the server's queue is empty and nothing runs."""
    end = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while time.monotonic() < end:
            text = (await http.get("/metrics")).text
            depth = float(re.search(r"^llmsup_queue_depth (\S+)", text, re.M).group(1))
            running = float(re.search(r"^llmsup_running_jobs (\S+)", text, re.M).group(1))
            if depth == 0 and running == 0:
                return
            await asyncio.sleep(0.1)  # each scrape costs the server a little CPU
    raise TimeoutError("the server's queue did not drain")


async def supervisor_idle(sup: Supervisor, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        counts = sup.store.counts()
        if counts[JobStatus.QUEUED] == 0 and counts[JobStatus.RUNNING] == 0:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("the supervisor's queue did not drain")


async def rest(url: str, clients: int, total: int, kind: str) -> list[list[object]]:
    async def submit(post: Post) -> None:
        status, body = await post("/v1/jobs", {"prompt": "x", "max_tokens": 1})
        assert status == 202, body

    async def complete(post: Post) -> None:
        status, body = await post("/v1/completions", {"prompt": "x", "max_tokens": 1})
        assert status == 200 and body["choices"][0]["finish_reason"] == "length", body

    # a fresh client per phase: uvicorn closes connections idle for 5 s, as they are between phases
    async with http_client(kind, url, clients) as post:
        await drive(clients, clients, lambda: submit(post))  # warm-up: every connection opened
        t0 = time.perf_counter()  # (no pause: uvicorn closes connections idle for 5 s, racing the next request)
        latencies, rate = await drive(clients, total, lambda: submit(post))
    await server_idle(url)
    admission = row(f"REST POST /v1/jobs ({kind})", clients, latencies, rate, total / (time.perf_counter() - t0))
    async with http_client(kind, url, clients) as post:
        await drive(clients, clients, lambda: complete(post))
        e2e = row(f"REST POST /v1/completions ({kind})", clients, *await drive(clients, total // 2,
                                                                              lambda: complete(post)))
    return [admission, e2e]


async def python_api(run_dir: Path, clients: int, total: int) -> list[list[object]]:
    sup = Supervisor(settings(run_dir, engines=2, queue_max=100_000))
    await sup.start()
    try:
        async def submit() -> float:
            t0 = time.perf_counter()
            sup.submit(JobRequest("x", max_tokens=1))
            spent = time.perf_counter() - t0
            await asyncio.sleep(0)  # let the other clients and the dispatcher run, as a server would
            return spent

        async def complete() -> None:
            await sup.wait(sup.submit(JobRequest("x", max_tokens=1)).job.id, 300)

        t0 = time.perf_counter()
        latencies, rate = await drive(clients, total, submit)
        await supervisor_idle(sup)
        admission = row("Python Supervisor.submit", clients, latencies, rate, total / (time.perf_counter() - t0))
        e2e = row("Python submit + wait", clients, *await drive(clients, total // 2, complete))
        return [admission, e2e]
    finally:
        await sup.stop()


async def main(clients: int, total: int, kinds: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="llmsup-bench-rest-"))
    try:
        py_rows = await python_api(tmp / "py", clients, total)
        rest_rows: list[list[list[object]]] = []
        for i, kind in enumerate(kinds):
            server = ServeProcess(tmp / f"rest-{i}", engines=2)
            try:
                rest_rows.append(await rest(server.url, clients, total, kind))
            finally:
                server.stop()
        rows = [py_rows[0], *(r[0] for r in rest_rows), py_rows[1], *(r[1] for r in rest_rows)]
        print(table(f"Admission (first rows) and end to end (last rows), {clients} concurrent clients, empty jobs "
                    "(sim, max_tokens=1), 2 engines", HEADERS, rows))
        if RETRIES[0]:
            print(f"({RETRIES[0]} REST requests were sent again after a keep-alive connection closed under them)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=4000, help="admission requests (end to end: half)")
    parser.add_argument("--client", action="append", choices=["httpx", "aiohttp"],
                        help="HTTP client(s) to load the server with (repeatable; default httpx)")
    args = parser.parse_args()
    asyncio.run(main(args.clients, args.requests, args.client or ["httpx"]))
