"""Celery and Ray equivalents of the pipeline bench's cases, run in this process when those packages are installed
(else one row each says it is missing): a chain of 3 trivial tasks, and a fan-out of N tasks with a merge (Celery's
chord; a Ray task graph whose merge task takes the N results).

Celery runs an in-process worker (``celery.contrib.testing.worker.start_worker``, a pool of threads) on the
in-memory broker and result backend (``memory://``, ``cache+memory://``): no broker process or network, so its rows
show Celery's own cost, less than it is beside Redis or RabbitMQ. Ray starts a local instance (``ray.init``) with
as many worker CPUs as this machine has. The tasks do nothing (they return their input), as llmsup's steps in the
bench run the sim backend at 0 s a token: each row is the orchestration's cost.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.stats import summary_ms

Case = tuple[str, Callable[[], Any]]
WARM_UP = 5


def echo(value: Any) -> Any:
    return value


def merge(*values: Any) -> str:
    return json.dumps(list(values))


def merge_list(values: list[Any]) -> str:
    return merge(*values)


def peer_rows(runs: int, clients: int, total: int, fan: int) -> list[list[object]]:
    """Rows of ``[what, clients, n, p50 ms, p99 ms, per s]`` for Celery and Ray: measured when installed, a row
    saying which is missing otherwise (and an error's row when one of them fails here)."""
    rows: list[list[object]] = []
    for name, module, run in (("Celery", "celery", celery_cases), ("Ray", "ray", ray_cases)):
        if importlib.util.find_spec(module) is None:
            rows.append([f"{name} chain of 3 / fan-out of {fan}", "-", 0, "missing", "missing",
                         f"missing ({module} not installed)"])
            continue
        try:
            rows += run(lambda cases: measure_cases(cases, runs, clients, total), fan)
        except Exception as exc:  # a peer that cannot run here says why in its row; the bench's own rows stand
            rows.append([f"{name} chain of 3 / fan-out of {fan}", "-", 0, "error", "error",
                         f"{type(exc).__name__}: {str(exc)[:120]}"])
    return rows


def measure_cases(cases: list[Case], runs: int, clients: int, total: int) -> list[list[object]]:
    """Each case ``runs`` times one at a time, then ``total`` times from ``clients`` threads at once."""
    rows: list[list[object]] = []
    for concurrency, count in ((1, runs), (clients, total)):
        for name, call in cases:
            for _ in range(WARM_UP):
                call()
            latencies, rate = timed(call, concurrency, count)
            s = summary_ms(latencies)
            rows.append([name, concurrency, s["n"], s["p50"], s["p99"], rate])
    return rows


def timed(call: Callable[[], Any], clients: int, count: int) -> tuple[list[float], float]:
    def one(_: int) -> float:
        t0 = time.perf_counter()
        call()
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, range(count)))
    return latencies, count / (time.perf_counter() - t0)


def celery_cases(measure: Callable[[list[Case]], list[list[object]]], fan: int) -> list[list[object]]:
    from celery import Celery, chain, chord
    from celery.contrib.testing.worker import start_worker

    app = Celery("llmsup-bench", broker="memory://", backend="cache+memory://")
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
    step = app.task(name="bench.echo")(echo)
    gather = app.task(name="bench.merge")(merge_list)
    threads = max(4, os.cpu_count() or 1)
    with start_worker(app, pool="threads", concurrency=threads, perform_ping_check=False, loglevel="WARNING"):
        return measure([
            ("Celery chain of 3", lambda: chain(step.s("x"), step.s(), step.s()).apply_async().get(timeout=60)),
            (f"Celery chord of {fan}", lambda: chord([step.s(i) for i in range(fan)])(gather.s()).get(timeout=60)),
        ])


def ray_cases(measure: Callable[[list[Case]], list[list[object]]], fan: int) -> list[list[object]]:
    import ray

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        step, gather = ray.remote(echo), ray.remote(merge)
        return measure([
            ("Ray task graph: chain of 3", lambda: ray.get(step.remote(step.remote(step.remote("x"))))),
            (f"Ray task graph: fan-out of {fan} and merge",
             lambda: ray.get(gather.remote(*[step.remote(i) for i in range(fan)]))),
        ])
    finally:
        ray.shutdown()
