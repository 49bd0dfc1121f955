"""What the metrics cost the supervisor's one loop: each observation point, a health tick, a scrape.

    .venv/bin/python -m bench.bench_metrics [--runs 20000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from prometheus_client import generate_latest

from bench.stats import table
from llmsup.supervisor.core.engine_state import Engine, EngineState, move
from llmsup.supervisor.core.jobs import EngineRef, Job, JobStatus
from llmsup.supervisor.core.outcomes import Settlement
from llmsup.supervisor.core.running import RunningJob
from llmsup.supervisor.metrics.prometheus import Metrics


def per_call_us(fn: Callable[[], object], runs: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - t0) / runs * 1e6


def engines(n: int) -> list[Engine]:
    out = []
    for i in range(n):
        engine = Engine(id=i, host="h", host_key="h|b", pid=1000 + i, gpu=str(i), rss_mb=500.0, gpu_mem_mb=9000.0)
        move(engine, EngineState.IDLE, "bench")
        out.append(engine)
    return out


def main(runs: int) -> None:
    metrics = Metrics(model_name=lambda: "bench-model")
    pool = engines(8)
    metrics.update(3, 2, pool, 1, 0.0, 1e9)
    engine = pool[0]
    job = Job(prompt="p", status=JobStatus.RUNNING, created_at=1e9, started_at=1e9 + 0.5,
              engine=EngineRef(0, "h", 1000, "0"))
    run = RunningJob(job, engine, started_mono=10.0, pieces=["x"] * 64, first_token_mono=10.1, last_token_mono=11.0)
    done = Settlement(JobStatus.SUCCEEDED, "x" * 64, 64, finish_reason="stop", prompt_tokens=12)
    ended = job.with_changes(status=JobStatus.SUCCEEDED, finished_at=1e9 + 1.6, finish_reason="stop")
    tick = [0.0]

    def health_tick() -> None:
        tick[0] += 0.25
        metrics.update(3, 2, pool, 1, tick[0], 1e9 + tick[0])

    rows = [
        ["each streamed piece (token_piece)", per_call_us(lambda: metrics.token_piece(0.01), runs)],
        ["each job's end (settled + finished)", per_call_us(lambda: (metrics.settled(run, done, 11.1),
                                                                     metrics.finished(ended)), runs)],
        ["each health tick, 8 engines (update)", per_call_us(health_tick, runs // 10)],
        ["each scrape (generate_latest)", per_call_us(lambda: generate_latest(metrics.registry), runs // 100)],
    ]
    size = len(generate_latest(metrics.registry))
    print(table("Metrics cost on the supervisor's loop (one model, 8 engines)", ["observation", "us per call"], rows))
    print(f"/metrics body: {size} bytes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20_000)
    main(parser.parse_args().runs)
