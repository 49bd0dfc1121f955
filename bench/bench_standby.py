"""Runaway recovery with and without warm standby engines, on the workload Celery and Ray ran on this machine.

2 serving engines; phase A: pure-Python runaways (SIGINT frees them); phase B: SIGINT-proof hangs (only SIGKILL
frees them); limit 1.0 s, SIGKILL 0.5 s after the SIGINT. Recovery = the next job's start on the freed capacity
minus the runaway's deadline. Then the transformers backend on the tiny local model (deadline -> next job on a
loaded engine, and an engine kill -> next job), and the control plane's latency with every core busy.

    .venv/bin/python -m bench.bench_standby [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.load import saturate
from bench.stats import pct, table
from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings

LIMIT_S, KILL_AFTER_S = 1.0, 0.5
# Measured on this 2-core machine with the same workload (2 workers, limit 1.0 s, hard kill 0.5 s later):
# seconds from the deadline to the slot's next task, (median, max).
PEERS = {
    ("A", "Celery (soft time limit)"): (0.009, 0.013),
    ("A", "Ray (ray.cancel)"): (0.016, 0.021),
    ("B", "Celery (hard time limit)"): (0.72, 2.8),
    ("B", "Ray (cancel force=True)"): (0.92, 1.02),
}


def make_settings(run_dir: Path, standby: int, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(run_dir=run_dir, engines=2, standby=standby, backend="sim", sim_token_s=0.0,
                                interrupt_grace_s=0.25, kill_grace_s=KILL_AFTER_S, heartbeat_ms=500)
    base.update(kw)
    return Settings(**base)


async def ready(sup: Supervisor, standby: int) -> None:
    end = time.monotonic() + 120
    while sum(1 for e in sup.pool if e.state.value == "standby") < standby:
        if time.monotonic() > end:
            raise TimeoutError("standby engines did not come up")
        await asyncio.sleep(0.05)


async def recovery_rounds(sup: Supervisor, standby: int, prompt: str, rounds: int,
                          deadline: float = LIMIT_S) -> tuple[list[float], float]:
    """Each round: 2 runaways fill both engines, 2 jobs wait; recovery = each waiting job's start - deadline."""
    out: list[float] = []
    t0 = time.monotonic()
    for _ in range(rounds):
        await ready(sup, standby)
        hangs = [sup.submit(JobRequest(prompt, deadline_s=deadline, max_tokens=4)).job for _ in range(2)]
        nexts = [sup.submit(JobRequest("next", max_tokens=1)).job for _ in range(2)]
        done_hangs: list[Job] = [await sup.wait(j.id, 60) for j in hangs]
        done_nexts: list[Job] = [await sup.wait(j.id, 60) for j in nexts]
        assert all(h.status is JobStatus.TIMED_OUT for h in done_hangs), done_hangs
        due = sorted((h.started_at or 0) + deadline for h in done_hangs)
        starts = sorted(n.started_at or 0 for n in done_nexts)
        out.extend(s - d for s, d in zip(starts, due))
    return out, time.monotonic() - t0


async def sim_phases(rounds: int) -> list[list[object]]:
    rows: list[list[object]] = []
    for standby in (0, 1):
        with tempfile.TemporaryDirectory() as tmp:
            sup = Supervisor(make_settings(Path(tmp) / "run", standby))
            await sup.start()
            try:
                for phase, prompt in (("A", "spin [sim:hang]"), ("B", "stuck in C [sim:hang-nosigint]")):
                    values, makespan = await recovery_rounds(sup, standby, prompt, rounds)
                    rows.append([phase, f"llmsup --standby {standby}", len(values), statistics.median(values),
                                 max(values), makespan])
            finally:
                await sup.stop()
    for (phase, name), (median, worst) in PEERS.items():
        rows.append([phase, name + " [earlier run]", "-", median, worst, "-"])
    rows.sort(key=lambda r: str(r[0]))
    return rows


async def transformers_rows(rounds: int) -> list[list[object]]:
    rows: list[list[object]] = []
    for standby in (0, 1):
        with tempfile.TemporaryDirectory() as tmp:
            sup = Supervisor(make_settings(Path(tmp) / "run", standby, engines=1, backend="transformers",
                                           engine_threads=1))
            await sup.start()
            try:
                sigint, kill = [], []
                for _ in range(rounds):
                    await ready(sup, standby)
                    long = sup.submit(JobRequest("Once upon a time", deadline_s=LIMIT_S, max_tokens=100_000,
                                                 extra={"ignore_eos": True})).job
                    nxt = sup.submit(JobRequest("next", max_tokens=1)).job
                    long_done, nxt_done = await sup.wait(long.id, 60), await sup.wait(nxt.id, 60)
                    sigint.append((nxt_done.started_at or 0) - (long_done.started_at or 0) - LIMIT_S)
                    await ready(sup, standby)
                    busy = sup.submit(JobRequest("Once upon a time", max_tokens=100_000, extra={"ignore_eos": True})).job
                    while not sup.get(busy.id).tokens:
                        await asyncio.sleep(0.01)
                    nxt = sup.submit(JobRequest("next", max_tokens=1)).job
                    engine_id = sup.get(busy.id).engine.id  # type: ignore[union-attr]
                    t_kill = time.time()
                    sup.restart_engine(engine_id)  # the SIGKILL path, as for a hang SIGINT cannot end
                    nxt_done = await sup.wait(nxt.id, 120)
                    kill.append((nxt_done.started_at or 0) - t_kill)
                rows.append([f"--standby {standby}", "deadline (SIGINT) -> next job", statistics.median(sigint),
                             max(sigint)])
                rows.append([f"--standby {standby}", "engine killed -> next job", statistics.median(kill), max(kill)])
            finally:
                await sup.stop()
    return rows


async def contention_rows(rounds: int) -> list[list[object]]:
    """Deadline -> next job start with both cores spun, spinners in their own sessions or in ours."""
    rows: list[list[object]] = []
    for same_session in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            sup = Supervisor(make_settings(Path(tmp) / "run", 0, interrupt_grace_s=0.25, kill_grace_s=1.0))
            await sup.start()
            try:
                with saturate(same_session=same_session):
                    values, _ = await recovery_rounds(sup, 0, "spin [sim:hang]", rounds, deadline=0.5)
            finally:
                await sup.stop()
        ms = [v * 1000 for v in values]
        rows.append(["spinners in the supervisor's session" if same_session else "spinners in their own sessions",
                     len(ms), statistics.median(ms), pct(ms, 0.99), max(ms)])
    return rows


async def main(rounds: int, only: str | None = None) -> None:
    if only == "contention":
        print(table("Control plane with both cores busy: deadline -> next job start, ms", ["load", "n", "p50", "p99", "max"],
                    await contention_rows(rounds)))
        return
    print(table("Runaway recovery, seconds from the deadline to the next job on the freed capacity "
                f"(2 engines, limit {LIMIT_S}s, SIGKILL {KILL_AFTER_S}s after SIGINT, {rounds} rounds x 2)",
                ["phase", "system", "n", "median s", "max s", "makespan s"], await sim_phases(rounds)))
    print(table("transformers, tiny local model, 1 engine (seconds)", ["standby", "measure", "median s", "max s"],
                await transformers_rows(max(3, rounds // 3))))
    print(table("Control plane with both cores busy (2 python runaways + 2 waiting jobs a round, deadline 0.5s): "
                "deadline -> next job start, ms", ["load", "n", "p50", "p99", "max"], await contention_rows(rounds)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--only", choices=["contention"], default=None)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.only))
