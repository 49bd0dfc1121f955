"""IPyParallel's own behaviour that the watchdog is built on (docs/measured.md section 1), on a bare local cluster.

    .venv/bin/python -m bench.bench_ipp [--runs 100] [--task-s 0.2]

Every SIGINT goes to the engine's main thread, as the supervisor sends it (``supervisor/cluster/signals.py``):

- lost reply: a SIGINT sent as a ``--task-s`` task should end: the task completes, is interrupted, or its reply is
  lost (no result, while a no-op sent after it to the same engine completes);
- early SIGINT: sent right after submit: the task completes anyway (the idle kernel swallowed it) or is interrupted;
- late SIGINT: two SIGINTs 20-50 ms apart to a runaway with the next task queued behind it: is the next one hit;
- SIGTERM (to the process) during a 1 s task: the task is interrupted, or completes and the engine exits after it;
- cluster start: ``Cluster(n=2).start_and_connect_sync()`` at three heartbeat periods.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import ipyparallel as ipp
import psutil
from ipyparallel.error import RemoteError

from bench.stats import table
from llmsup.supervisor.cluster.signals import interrupt_main_thread
from tests.support.waiting import eventually

REPLY_WAIT_S = 2.0


def _spin(seconds: float) -> float:
    """A pure-Python task: SIGINT reaches it between bytecodes. (Sent by value: imports inside.)"""
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return seconds


def _noop() -> None:
    return None


def outcome(ar: Any, view: Any) -> str:
    """completed | interrupted | lost (no reply, while a later no-op on the same engine returned) | error."""
    try:
        ar.get(timeout=REPLY_WAIT_S)
        return "completed"
    except RemoteError as exc:
        return "interrupted" if exc.ename == "KeyboardInterrupt" else f"error {exc.ename}"
    except ipp.TimeoutError:
        view.apply_async(_noop).get(timeout=30)
        return "lost" if not ar.ready() else "late reply"


def lost_reply(view: Any, pid: int, runs: int, task_s: float) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(runs):
        ar = view.apply_async(_spin, task_s)
        ar.wait_for_send()
        time.sleep(task_s + random.uniform(-0.003, 0.003))  # aim at the task's end (pacing, not synchronisation)
        interrupt_main_thread(pid)
        seen[outcome(ar, view)] += 1
    return seen


def early_sigint(view: Any, pid: int, runs: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(runs):
        ar = view.apply_async(_spin, 0.5)
        interrupt_main_thread(pid)
        seen[outcome(ar, view)] += 1
    return seen


def late_sigint(view: Any, pid: int, runs: int) -> Counter[str]:
    """A runaway with the next task queued behind it; two SIGINTs 20-50 ms apart: the second one lands on the next."""
    seen: Counter[str] = Counter()
    for _ in range(runs):
        runaway = view.apply_async(_spin, 30)
        nxt = view.apply_async(_spin, 0.3)  # queued on the engine behind the runaway
        time.sleep(0.1)  # pacing: let the runaway start
        interrupt_main_thread(pid)
        time.sleep(random.uniform(0.02, 0.05))
        interrupt_main_thread(pid)
        outcome(runaway, view)
        seen["next task " + outcome(nxt, view)] += 1
    return seen


def sigterm(view: Any, pid: int) -> list[list[object]]:
    """One run (the engine exits after it)."""
    ar = view.apply_async(_spin, 1.0)
    time.sleep(0.2)  # pacing: let it start
    os.kill(pid, signal.SIGTERM)
    try:
        ar.get(timeout=10)
        result = "completed"
    except RemoteError as exc:
        result = "interrupted" if exc.ename == "KeyboardInterrupt" else f"error {exc.ename}"
    gone = _gone_within(pid, 10.0)
    return [["SIGTERM during a 1 s task", 1, f"task {result}, engine {'exited' if gone else 'still running'}", 1]]


def _gone_within(pid: int, timeout: float) -> bool:
    try:
        return eventually(lambda: not psutil.pid_exists(pid), timeout, f"pid {pid} to exit", interval=0.05)
    except AssertionError:
        return False


def cluster_start(period_ms: int) -> tuple[float, float]:
    """Seconds to start a 2-engine cluster and connect; seconds until an added engine runs a task."""
    t0 = time.monotonic()
    cluster = ipp.Cluster(n=2, controller_args=[f"--HeartMonitor.period={period_ms}"], log_level=40)
    rc = cluster.start_and_connect_sync()
    started = time.monotonic() - t0
    try:
        t1 = time.monotonic()
        cluster.start_engines_sync(1)
        rc.wait_for_engines(3, timeout=120)
        rc[max(rc.ids)].apply_sync(_noop)
        added = time.monotonic() - t1
    finally:
        rc.close()
        cluster.stop_cluster_sync()
    return started, added


def with_engine(body: Callable[[Any, int], list[list[object]]]) -> list[list[object]]:
    cluster = ipp.Cluster(n=1, controller_args=["--HeartMonitor.period=500"], log_level=40)
    rc = cluster.start_and_connect_sync()
    try:
        rc.wait_for_engines(1, timeout=120)
        view = rc[rc.ids[0]]
        return body(view, view.apply_sync(os.getpid))
    finally:
        rc.close()
        cluster.stop_cluster_sync()


def main(runs: int, task_s: float) -> None:
    os.environ["IPYTHONDIR"] = tempfile.mkdtemp(prefix="llmsup-bench-ipp-")

    def signals(view: Any, pid: int) -> list[list[object]]:
        rows: list[list[object]] = []
        for name, counts in (
            (f"SIGINT as a {task_s} s task ends", lost_reply(view, pid, runs, task_s)),
            ("SIGINT right after submit", early_sigint(view, pid, runs)),
            ("second SIGINT 20-50 ms after the first", late_sigint(view, pid, runs)),
        ):
            rows.extend([name, runs, what, n] for what, n in sorted(counts.items()))
        return rows

    rows = with_engine(signals) + with_engine(sigterm)
    print(table(f"IPyParallel {ipp.__version__}: signals to the engine (SIGINT to its main thread), 1 engine",
                ["case", "runs", "outcome", "count"], rows))
    starts = [[period, *cluster_start(period)] for period in (3000, 500, 100)]
    print(table("Cluster start (2 engines) and one added engine until it runs a task",
                ["heartbeat ms", "start + connect s", "added engine s"], starts))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--task-s", type=float, default=0.2)
    args = parser.parse_args()
    main(args.runs, args.task_s)
