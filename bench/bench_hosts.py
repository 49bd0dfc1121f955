"""Engines on several hosts (Linux namespace hosts built on this machine, as root; see tests/nethosts.py).

    .venv/bin/python -m bench.bench_hosts signals [--runs 30]     # the two SIGINT paths, idle and CPUs busy
    .venv/bin/python -m bench.bench_hosts scale [--sizes 1,8,32]  # one job mix on 1, 8 and 32 engines

``signals``: one engine on the server's own host (SIGINT by ``os.kill``) and one on a namespace host (SIGINT
through ``Client.send_signal``: controller -> the engine's nanny there); for each, [sim:hang] jobs with a 0.3 s
deadline and a job queued behind each: deadline -> job settled, deadline -> next job started on that engine.

``scale``: sim engines (0 s/token) spread over the server's host and 3 namespace hosts (join agents); per size:
dispatch throughput (empty jobs submitted at once), dispatch latency (submit -> result of one empty job at a
time), deadline -> next job started (one [sim:hang] per engine, deadline 0.5 s, twice as many jobs queued behind).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_core import interrupt_latency
from bench.load import saturate
from bench.stats import summary_ms, table
from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from nethosts import HostNet, HostProcess, namespaces_unavailable  # noqa: E402 (the test hosts' module)


def settings(run_dir: Path, net: HostNet, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(run_dir=run_dir, engines=1, backend="sim", sim_token_s=0.0,
                                cluster_ip=net.server_address)
    base.update(kw)
    return Settings(**base)


def join(net: HostNet, name: str, sup: Supervisor, engines: int) -> HostProcess:
    host = net.add_host(name)
    argv = [sys.executable, "-m", "llmsup.supervisor.cli", "join", str((sup.settings.run_dir / "join.json").resolve()),
            "--engines", str(engines), "--work-dir", str(net.workdir / f"join-{name}"), "--log-level", "WARNING"]
    return net.spawn(host, argv, log_name=f"agent-{name}")


async def serving(sup: Supervisor, n: int, timeout: float) -> float:
    t0 = time.monotonic()
    while len(sup.pool.serving()) < n:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{len(sup.pool.serving())} of {n} engines serving after {timeout}s")
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


def only(sup: Supervisor, keep: int) -> None:
    """Drain every engine but ``keep`` (jobs then go to that one)."""
    for engine in sup.pool:
        sup.drain_engine(engine.id, drain=engine.id != keep)


# the two signal paths ------------------------------------------------------------------------------------------
async def signals(runs: int) -> str:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="llmsup-bench-hosts-") as tmp:
        net = HostNet.create(Path(tmp))
        sup = Supervisor(settings(Path(tmp) / "run", net))
        try:
            await sup.start()
            join(net, "hosta", sup, 1)
            await serving(sup, 2, 120)
            local = next(e for e in sup.pool if sup.driver.is_local(e))
            remote = next(e for e in sup.pool if not sup.driver.is_local(e))
            for load in ("idle", "CPUs busy"):
                for label, engine in (("this host, os.kill", local), ("other host, send_signal", remote)):
                    only(sup, engine.id)
                    if load == "idle":
                        settled, nxt = await interrupt_latency(sup, runs)
                    else:
                        with saturate(same_session=False):
                            settled, nxt = await interrupt_latency(sup, runs)
                    for what, values in (("deadline -> job settled", settled), ("deadline -> next job started", nxt)):
                        s = summary_ms(values)
                        rows.append([f"{load}, {label}: {what}", s["n"], s["p50"], s["p99"], s["max"]])
        finally:
            await sup.stop()
            net.cleanup()
    return table("SIGINT paths across hosts, [sim:hang], deadline 0.3 s (CPUs busy: a spinner per core, own "
                 "sessions)", ["measure", "n", "p50 ms", "p99 ms", "max ms"], rows)


# how cost grows --------------------------------------------------------------------------------------------------
LAYOUT = {1: (1, []), 8: (2, [2, 2, 2]), 32: (8, [8, 8, 8])}  # engines on the server's host, per namespace host


async def throughput(sup: Supervisor, n: int) -> float:
    jobs = [sup.submit(JobRequest(f"empty {i}", max_tokens=1)).job for i in range(n)]
    done = [await sup.wait(j.id, 300) for j in jobs]
    assert all(j.status is JobStatus.SUCCEEDED for j in done)
    return n / (max(j.finished_at or 0 for j in done) - min(j.created_at for j in done))


async def latency(sup: Supervisor, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        job = await sup.wait(sup.submit(JobRequest(f"one {i}", max_tokens=1)).job.id, 60)
        out.append(time.perf_counter() - t0)
        assert job.status is JobStatus.SUCCEEDED
    return out


async def next_starts(sup: Supervisor, engines: int, rounds: int, deadline: float = 0.5) -> tuple[list[float], int]:
    """One runaway per engine, twice as many jobs queued behind: each runaway's place frees at its deadline (by
    SIGINT, or by SIGKILL and a replacement); the k-th job to start behind them is matched with the k-th deadline.
    Also returns how many runaways needed the SIGKILL."""
    out, killed = [], 0
    for _ in range(rounds):
        hangs = [sup.submit(JobRequest(f"runaway {i} [sim:hang]", deadline_s=deadline)).job for i in range(engines)]
        behind = [sup.submit(JobRequest(f"behind {i}", max_tokens=1)).job for i in range(2 * engines)]
        done: list[Job] = [await sup.wait(j.id, 120) for j in hangs + behind]
        assert all(h.status is JobStatus.TIMED_OUT for h in done[:engines]), [h.error for h in done[:engines]]
        killed += sum("engine killed" in (h.error or "") for h in done[:engines])
        deadlines = sorted((h.started_at or 0) + deadline for h in done[:engines])
        starts = sorted(j.started_at or 0 for j in done[engines:])[:engines]
        out += [start - due for due, start in zip(deadlines, starts)]
    return out, killed


async def scale(sizes: list[int]) -> str:
    rows: list[list[object]] = []
    for size in sizes:
        local, remote = LAYOUT.get(size, (size, []))
        with tempfile.TemporaryDirectory(prefix="llmsup-bench-scale-") as tmp:
            net = HostNet.create(Path(tmp))
            sup = Supervisor(settings(Path(tmp) / "run", net, engines=local, engine_start_timeout_s=600))
            try:
                await sup.start()
                for i, n in enumerate(remote):
                    join(net, f"host{i + 1}", sup, n)
                up_s = await serving(sup, size, 600)
                await latency(sup, 10)  # warm-up
                tput = await throughput(sup, max(200, 20 * size))
                lat = summary_ms(await latency(sup, 100))
                starts, killed = await next_starts(sup, size, max(1, 30 // size))
                nxt = summary_ms(starts)
                rows.append([size, f"{1 + len(remote)}", f"{up_s:.0f}", tput, lat["p50"], lat["p99"], nxt["n"],
                             nxt["p50"], nxt["p99"], killed, f"{os.getloadavg()[0]:.1f}"])
            finally:
                await sup.stop()
                net.cleanup()
    return table("How cost grows: one supervisor, one controller, sim engines over namespace hosts",
                 ["engines", "hosts", "all serving s", "jobs/s", "dispatch p50 ms", "dispatch p99 ms",
                  "runaways", "deadline->next start p50 ms", "p99 ms", "of which SIGKILLed", "load 1-min"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["signals", "scale"])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--sizes", default="1,8,32")
    args = parser.parse_args()
    reason = namespaces_unavailable()
    if reason:
        sys.exit(f"namespace test hosts unavailable: {reason}")
    print(f"{os.cpu_count()} CPUs, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.what == "signals":
        print(asyncio.run(signals(args.runs)))
    else:
        print(asyncio.run(scale([int(s) for s in args.sizes.split(",")])))


if __name__ == "__main__":
    main()


