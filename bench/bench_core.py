"""Core figures on a real local cluster (sim backend): interrupt latency, escalation recovery,
dispatch overhead against raw IPyParallel, REST throughput.

    .venv/bin/python -m bench.bench_core [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import ipyparallel as ipp

from bench.load import saturate
from bench.stats import summary_ms, table
from llmsup.engines import runtime, sim
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings
from tests.support import live


def settings(run_dir: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(run_dir=run_dir, engines=1, backend="sim", sim_token_s=0.0)
    base.update(kw)
    return Settings(**base)


async def interrupt_latency(sup: Supervisor, runs: int, deadline: float = 0.3) -> tuple[list[float], list[float]]:
    """deadline -> job settled, and deadline -> next job started on the same engine."""
    settled, next_started = [], []
    for _ in range(runs):
        hang = sup.submit(JobRequest("runaway [sim:hang]", deadline_s=deadline, max_tokens=2)).job
        nxt = sup.submit(JobRequest("next", max_tokens=1)).job
        hang = await sup.wait(hang.id, 30)
        nxt = await sup.wait(nxt.id, 30)
        assert hang.status is JobStatus.TIMED_OUT, hang
        assert nxt.engine.pid == hang.engine.pid
        due = hang.started_at + deadline
        settled.append(hang.finished_at - due)
        next_started.append(nxt.started_at - due)
    return settled, next_started


async def raw_send_signal(sup: Supervisor, runs: int) -> list[float]:
    """Reference: raw Client.send_signal(SIGINT) on a spinning apply -> its result ready."""
    eid = next(iter(sup.pool)).id
    out = []
    for _ in range(runs):
        fut = sup.cluster.apply(eid, sim._spin_forever)
        await asyncio.sleep(0.05)  # benchmark pacing only: let the task start
        t0 = time.perf_counter()
        await asyncio.wrap_future(sup.cluster.send_signal(eid, signal.SIGINT))
        try:
            await asyncio.wrap_future(fut)
        except Exception:  # the interrupted task's RemoteError(KeyboardInterrupt)
            pass
        out.append(time.perf_counter() - t0)
    return out


async def escalation(sup: Supervisor, runs: int, deadline: float = 0.3) -> list[float]:
    """[sim:hang-nosigint]: deadline -> replacement engine running the next job."""
    out = []
    for _ in range(runs):
        stuck = sup.submit(JobRequest("stuck [sim:hang-nosigint]", deadline_s=deadline, max_tokens=2)).job
        nxt = sup.submit(JobRequest("next", max_tokens=1)).job
        stuck = await sup.wait(stuck.id, 60)
        nxt = await sup.wait(nxt.id, 60)
        assert stuck.status is JobStatus.TIMED_OUT and nxt.engine.pid != stuck.engine.pid
        out.append(nxt.started_at - (stuck.started_at + deadline))
    return out


async def python_overhead(sup: Supervisor, runs: int) -> tuple[list[float], list[float]]:
    eid = next(iter(sup.pool)).id
    raw, api = [], []
    for _ in range(20):  # warm-up
        await asyncio.wrap_future(sup.cluster.apply(eid, runtime.ping))
        await sup.wait(sup.submit(JobRequest("x", max_tokens=1)).job.id, 10)
    for _ in range(runs):
        t0 = time.perf_counter()
        await asyncio.wrap_future(sup.cluster.apply(eid, runtime.ping))
        raw.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        job = sup.submit(JobRequest("x", max_tokens=1)).job
        await sup.wait(job.id, 10)
        api.append(time.perf_counter() - t0)
    return raw, api


class ServeProcess:
    """``llmsup serve`` (sim, 0 s/token) with ``engines`` engines, started and stopped by ``tests/support/live.py``."""

    def __init__(self, run_dir: Path, engines: int) -> None:
        env = dict(os.environ, LLMSUP_SIM_TOKEN_S="0", LLMSUP_QUEUE_MAX="100000")
        self.server = live.start_llmsup(run_dir, run_dir.parent, env, engines=engines, args=["--log-level", "warning"],
                                        log_name=f"{run_dir.name}-serve")
        self.url = self.server.url
        self.run_dir = run_dir

    def stop(self) -> None:
        live.stop(self.server)


async def rest_overhead(server: ServeProcess, runs: int) -> tuple[list[float], list[float]]:
    security = server.run_dir / "ipython" / "profile_llmsup" / "security" / "ipcontroller-llmsup-client.json"
    rc = ipp.Client(str(security))
    eid = rc.ids[0]
    raw, rest = [], []
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for i in range(runs + 20):
            t0 = time.perf_counter()
            await asyncio.wrap_future(rc[eid].apply_async(runtime.ping))
            t1 = time.perf_counter()
            job = (await http.post("/v1/jobs", json={"prompt": "x", "max_tokens": 1})).json()
            done = (await http.get(f"/v1/jobs/{job['id']}", params={"wait_s": 10})).json()
            t2 = time.perf_counter()
            assert done["status"] == "succeeded", done
            if i >= 20:
                raw.append(t1 - t0)
                rest.append(t2 - t1)
    rc.close()
    return raw, rest


async def rest_throughput(server: ServeProcess, jobs: int, clients: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(jobs):
        queue.put_nowait(i)

    async def worker(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            job = (await http.post("/v1/jobs", json={"prompt": "x", "max_tokens": 1})).json()
            done = (await http.get(f"/v1/jobs/{job['id']}", params={"wait_s": 60})).json()
            assert done["status"] == "succeeded", done

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        return jobs / (time.perf_counter() - t0)


def row(name: str, values: list[float], ref: float | None = None) -> list[object]:
    s = summary_ms(values)
    ratio = f"{s['p50'] / ref:.2f}x" if ref else ""
    return [name, s["n"], s["p50"], s["p99"], s["max"], ratio]


async def main(runs: int, escalation_runs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="llmsup-bench-"))
    heads = ["measure", "n", "p50 ms", "p99 ms", "max ms", "p50 ratio"]
    try:
        lat_rows: list[list[object]] = []
        for path in ("direct", "ipp"):
            sup = Supervisor(settings(tmp / f"int-{path}", signal_path=path))
            await sup.start()
            try:
                loads = ("idle", "saturated, own sessions", "saturated, supervisor's session")
                for load in loads:
                    if load == "idle":
                        settled, nxt = await interrupt_latency(sup, runs)
                        raw = await raw_send_signal(sup, runs) if path == "ipp" else None
                    else:
                        with saturate(same_session=load.endswith("supervisor's session")):
                            settled, nxt = await interrupt_latency(sup, runs)
                            raw = await raw_send_signal(sup, runs) if path == "ipp" else None
                    lat_rows.append(row(f"{load}, SIGINT {path}: deadline -> job settled", settled))
                    lat_rows.append(row(f"{load}, SIGINT {path}: deadline -> next job started", nxt))
                    if raw:
                        lat_rows.append(row(f"{load}, raw Client.send_signal -> result ready", raw))
            finally:
                await sup.stop()
        print(table("Interrupt latency, [sim:hang], 1 engine (signal_path=direct is the default for local engines)",
                    heads, lat_rows))

        sup = Supervisor(settings(tmp / "esc"))
        await sup.start()
        try:
            esc = await escalation(sup, escalation_runs)
        finally:
            await sup.stop()
        s = sup.settings
        print(table(f"Escalation recovery, [sim:hang-nosigint] (interrupt_grace_s={s.interrupt_grace_s}, "
                    f"kill_grace_s={s.kill_grace_s})", heads, [row("deadline -> replacement engine runs next job", esc)]))

        sup = Supervisor(settings(tmp / "py", engines=2))
        await sup.start()
        try:
            raw, api = await python_overhead(sup, runs * 10)
        finally:
            await sup.stop()
        server = ServeProcess(tmp / "rest", engines=2)
        try:
            raw2, rest = await rest_overhead(server, runs * 10)
            tput = await rest_throughput(server, jobs=2000, clients=64)
        finally:
            server.stop()
        ref, ref2 = summary_ms(raw)["p50"], summary_ms(raw2)["p50"]
        print(table("Dispatch overhead, empty job (max_tokens=1, sim 0 s/token), 2 engines", heads, [
            row("raw IPyParallel apply round trip (in-process cluster)", raw, ref),
            row("Python API submit -> result", api, ref),
            row("raw IPyParallel apply round trip (server's cluster)", raw2, ref2),
            row("REST POST /v1/jobs -> GET ?wait_s result", rest, ref2),
        ]))
        print(table("REST throughput, empty jobs, 2 engines, 64 concurrent clients", ["measure", "jobs/s"],
                    [["submit + long-poll result", tput]]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--escalation-runs", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.escalation_runs))
