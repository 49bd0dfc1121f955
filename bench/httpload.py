"""An async httpx load generator for llmsup's REST routes, and CPU accounting of the processes under load.

``closed_loop``: ``clients`` concurrent loops, each sending one job after another for ``seconds``, through
``POST /v1/completions`` (the OpenAI route: the answer comes when the job is done) or ``POST /v1/jobs`` then
``GET /v1/jobs/{id}?wait_s`` (the native route, long-polled). ``submit_many`` / ``fetch_all``: many jobs sent
at once, then every result fetched (the drain and pipelined figures). ``CpuMeter``: CPU seconds of the
supervisor process, of its whole process tree (controller, engines, nannies: every process with the server's
tag) and of this process (the load generator), between ``start`` and ``stop``. The HTTP client is
``bench/rawhttp.py``'s lean one unless ``CLIENT[0]`` is "httpx" (httpx costs ~8 ms of CPU per job here).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import psutil

from bench.rawhttp import RawClient

Route = Literal["completions", "jobs"]
BODY = {"prompt": "x", "max_tokens": 1}


Http = httpx.AsyncClient | RawClient
CLIENT = ["raw"]  # the load generator's HTTP client: "raw" (bench/rawhttp.py) or "httpx"
RETRIES = [0]  # requests sent again after the server closed an idle keep-alive connection under them


class _Retry(httpx.AsyncHTTPTransport):
    """uvicorn closes a connection idle for 5 s; a request that races that close is sent once more (counted)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except (httpx.ReadError, httpx.RemoteProtocolError):
            RETRIES[0] += 1
            return await super().handle_async_request(request)


def client(url: str, connections: int, timeout: float = 120) -> Http:
    """A pool of ``connections`` keep-alive connections, of the client ``CLIENT[0]`` names."""
    if CLIENT[0] == "raw":
        return RawClient(url, connections)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=4)
    return httpx.AsyncClient(base_url=url, timeout=timeout, transport=_Retry(limits=limits))


async def one_job(http: Http, route: Route) -> None:
    """One one-token job through ``route``, checked: a failure is an error, never a fast figure."""
    if route == "completions":
        resp = await http.post("/v1/completions", json=BODY)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["finish_reason"] == "length", resp.text
        return
    resp = await http.post("/v1/jobs", json=BODY)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    while True:
        done = await http.get(f"/v1/jobs/{job_id}", params={"wait_s": 30})
        assert done.status_code == 200, done.text
        status = done.json()["status"]
        if status not in ("queued", "running"):
            assert status == "succeeded", done.text
            return


@dataclass
class LoopResult:
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


async def closed_loop(http: Http, route: Route, clients: int, seconds: float) -> LoopResult:
    """``clients`` loops of one job after another, each starting jobs for ``seconds``; every job counts (the rate:
    jobs over the time until the last one ended)."""
    result = LoopResult()
    start = time.perf_counter()
    end = start + seconds

    async def loop() -> None:
        while (t0 := time.perf_counter()) < end:
            await one_job(http, route)
            result.latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(loop() for _ in range(clients)))
    result.elapsed = time.perf_counter() - start
    return result


async def bounded(n: int, concurrency: int, one: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """``one(i)`` for i in range(n), at most ``concurrency`` at a time; results in order."""
    out: list[Any] = [None] * n
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            out[i] = await one(i)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return out


async def submit_many(http: Http, n: int, concurrency: int) -> list[str]:
    """``n`` one-token jobs through ``POST /v1/jobs``; their ids."""
    async def one(_: int) -> str:
        resp = await http.post("/v1/jobs", json=BODY)
        assert resp.status_code == 202, resp.text
        job_id: str = resp.json()["id"]
        return job_id

    return await bounded(n, concurrency, one)


async def submit_batch(http: Http, n: int, per_request: int) -> list[str]:
    """``n`` one-token jobs through ``POST /v1/jobs:batch``, ``per_request`` prompts a request; their ids."""
    ids: list[str] = []
    for start in range(0, n, per_request):
        count = min(per_request, n - start)
        resp = await http.post("/v1/jobs:batch", json={"jobs": [BODY] * count})
        assert resp.status_code == 202, resp.text
        ids.extend(resp.json()["ids"])
    return ids


async def fetch_all(http: Http, ids: list[str], concurrency: int) -> None:
    """Wait for every job (long-polls), each must have succeeded."""
    async def one(i: int) -> None:
        while True:
            resp = await http.get(f"/v1/jobs/{ids[i]}", params={"wait_s": 30})
            assert resp.status_code == 200, resp.text
            status = resp.json()["status"]
            if status not in ("queued", "running"):
                assert status == "succeeded", resp.text
                return

    await bounded(len(ids), concurrency, one)


class CpuMeter:
    """CPU seconds (user + system) of the server process, its whole tree, and this process, over a window."""

    def __init__(self, server_pid: int, tree: Callable[[], list[psutil.Process]]) -> None:
        self.server = psutil.Process(server_pid)
        self.tree = tree
        self.me = psutil.Process()
        self._start: tuple[float, dict[int, float], float] = (0.0, {}, 0.0)
        self.supervisor = self.whole = self.generator = 0.0

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        try:
            t = proc.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    def _tree(self) -> dict[int, float]:
        return {p.pid: self._cpu(p) for p in self.tree()}

    def start(self) -> None:
        self._start = (self._cpu(self.server), self._tree(), self._cpu(self.me))

    def stop(self) -> None:
        server0, tree0, me0 = self._start
        self.supervisor = self._cpu(self.server) - server0
        self.whole = sum(cpu - tree0.get(pid, 0.0) for pid, cpu in self._tree().items())
        self.generator = self._cpu(self.me) - me0


# a runaway: the sim generates until its deadline, 50 tokens a second (a GPU's decode rate; at the sim's 0 s a token
# it would send a token every turn of the engine's loop, a flood no real engine sends)
RUNAWAY = {"prompt": "spin [sim:hang] [sim:slow=0.02]", "max_tokens": 100_000}


async def open_loop(http: Http, rate: float, seconds: float, runaway_every: int,
                    deadline_s: float) -> tuple[list[str], list[str]]:
    """Jobs through ``POST /v1/jobs`` at ``rate`` a second for ``seconds`` (each sent at its time, whatever the
    server's answers to the earlier ones), one in ``runaway_every`` a runaway with ``deadline_s``; the ids of
    the short jobs and of the runaways."""
    short: list[str] = []
    runaways: list[str] = []
    start = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []

    async def send(runaway: bool) -> None:
        resp = await http.post("/v1/jobs", json={**RUNAWAY, "deadline_s": deadline_s} if runaway else BODY)
        assert resp.status_code == 202, resp.text
        (runaways if runaway else short).append(resp.json()["id"])

    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(send(i % runaway_every == runaway_every - 1)))
    await asyncio.gather(*tasks)
    return short, runaways


async def records(http: Http, ids: list[str], concurrency: int) -> list[dict[str, Any]]:
    """Each job's record once it has ended (long-polls)."""
    async def one(i: int) -> dict[str, Any]:
        while True:
            resp = await http.get(f"/v1/jobs/{ids[i]}", params={"wait_s": 30})
            assert resp.status_code == 200, resp.text
            record: dict[str, Any] = resp.json()
            if record["status"] not in ("queued", "running"):
                return record

    return await bounded(len(ids), concurrency, one)
