"""Chaos against a live ``llmsup serve`` (sim backend): a job mix runs while engines, the supervisor and the
IPyParallel controller are SIGKILLed; afterwards every job must have ended exactly once, with a reason when it
did not succeed, the cluster must be back to its engine count after each kill, and no process may be left.

Used by the CI test (a short plan) and by ``bench/bench_chaos.py`` (the full plan). Jobs carry idempotency keys, so
a submission retried while the supervisor restarts cannot make a second job.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from support.live import LiveServer, start_server, stop, tagged_processes
from support.waiting import eventually

# (kind, prompt, request fields, weight)
KINDS: list[tuple[str, str, dict[str, Any], float]] = [
    ("plain", "hello", {"max_tokens": 8}, 40),
    ("slow", "slow [sim:slow=0.01]", {"max_tokens": 30}, 20),
    ("python_hang", "spin [sim:hang]", {"deadline_s": 0.5}, 10),
    ("c_hang", "stuck in C [sim:hang-nosigint]", {"deadline_s": 0.5}, 5),
    ("crash", "boom [sim:crash]", {"max_tokens": 4}, 3),
    ("error", "oops [sim:error]", {"max_tokens": 4}, 7),
    ("cancelled", "slow [sim:slow=0.05]", {"max_tokens": 400}, 15),
]
EXPECTED = {  # what each kind may end as
    "plain": {"succeeded"}, "slow": {"succeeded"}, "python_hang": {"timed_out"}, "c_hang": {"timed_out"},
    "crash": {"failed"}, "error": {"failed"}, "cancelled": {"cancelled", "succeeded"},
}
SERVER_ENV = {"LLMSUP_MAX_ATTEMPTS": "3", "LLMSUP_ENGINE_RELAUNCH_S": "1", "LLMSUP_DEADLINE_S": "30",
              "LLMSUP_QUEUE_TIMEOUT_S": "3600"}


@dataclass
class Plan:
    jobs: int = 1000
    engines: int = 4
    standby: int = 1
    engine_kill_every_s: tuple[float, float] = (2.0, 4.0)
    supervisor_kills_at: tuple[float, ...] = (0.25, 0.6)  # fractions of the jobs submitted
    controller_kills_at: tuple[float, ...] = (0.45,)
    max_engine_kills: int = 1000
    seed: int = 7
    finish_timeout_s: float = 600.0


@dataclass
class Report:
    jobs: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)  # job id: kind -> status
    lost: list[str] = field(default_factory=list)
    not_ended: list[str] = field(default_factory=list)
    without_reason: list[str] = field(default_factory=list)
    engine_kills: int = 0
    engine_recovery_s: list[float] = field(default_factory=list)
    not_recovered: int = 0
    supervisor_kills: int = 0
    supervisor_restart_s: list[float] = field(default_factory=list)
    controller_kills: int = 0
    controller_recovery_s: list[float] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.not_ended or self.without_reason or self.unexpected or self.leftovers
                    or self.not_recovered)


class Chaos:
    def __init__(self, base: Path, plan: Plan) -> None:
        self.base = base
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.env = {**SERVER_ENV, "LLMSUP_STANDBY": str(plan.standby)}
        self.servers: list[LiveServer] = []
        self.lock = threading.RLock()  # guards the current server while it is replaced
        self.report = Report(jobs=plan.jobs)
        self.kinds: dict[str, str] = {}  # idempotency key -> kind
        self.ids: dict[str, str] = {}  # idempotency key -> job id
        self.stop = threading.Event()

    # the server ----------------------------------------------------------------------------
    @property
    def server(self) -> LiveServer:
        with self.lock:
            return self.servers[-1]

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request, retried while the supervisor is down or restarting."""
        end = time.monotonic() + 120
        while True:
            try:
                with self.server.client(timeout=10) as http:
                    return http.request(method, path, **kw)
            except (httpx.TransportError, OSError):
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)

    def serving_engines(self) -> int:
        try:
            resp = self._call("GET", "/readyz")
            return int(resp.json().get("engines", 0))
        except (httpx.HTTPError, ValueError):
            return 0

    def wait_engines(self, timeout: float = 60.0) -> float | None:
        """Seconds until the plan's engine count serves again; None if it does not within ``timeout``."""
        t0 = time.monotonic()
        try:
            eventually(lambda: self.serving_engines() >= self.plan.engines, timeout, "engines", interval=0.05)
        except AssertionError:
            return None
        return time.monotonic() - t0

    # the kills ---------------------------------------------------------------------------------
    def kill_supervisor(self) -> None:
        old = self.server
        os.kill(old.proc.pid, signal.SIGKILL)  # its controller and engines are left behind, as after a crash
        old.proc.wait(timeout=10)
        t0 = time.monotonic()
        with self.lock:
            new = start_server(self.base, engines=self.plan.engines, env=self.env)  # same run dir
            self.servers.append(new)
        self.report.supervisor_kills += 1
        self.report.supervisor_restart_s.append(time.monotonic() - t0)

    def kill_controller(self) -> None:
        ledger = json.loads((self.server.run_dir / "processes.json").read_text())
        pid = int(ledger["processes"]["controller"]["pid"])
        os.kill(pid, signal.SIGKILL)
        self.report.controller_kills += 1
        time.sleep(0.5)  # let the supervisor notice before measuring the way back (not synchronisation)
        back = self.wait_engines(90)
        if back is None:
            self.report.not_recovered += 1
        else:
            self.report.controller_recovery_s.append(back + 0.5)

    def kill_engines(self) -> None:
        while not self.stop.is_set() and self.report.engine_kills < self.plan.max_engine_kills:
            if self.stop.wait(self.rng.uniform(*self.plan.engine_kill_every_s)):
                return
            with self.lock:
                try:
                    resp = self._call("GET", "/admin/engines", headers=self.server.admin)
                    engines = [e for e in resp.json()["engines"] if e["state"] not in ("restarting", "dead")]
                except (httpx.HTTPError, ValueError, KeyError, OSError):
                    continue
                if not engines:
                    continue
                victim = self.rng.choice(engines)
                try:
                    os.kill(int(victim["pid"]), signal.SIGKILL)
                except ProcessLookupError:
                    continue
            self.report.engine_kills += 1
            back = self.wait_engines(60)
            if back is None:
                self.report.not_recovered += 1
            else:
                self.report.engine_recovery_s.append(back)

    # the jobs ----------------------------------------------------------------------------------
    def submit_all(self) -> None:
        weights = [k[3] for k in KINDS]
        marks = sorted([(f, "supervisor") for f in self.plan.supervisor_kills_at]
                       + [(f, "controller") for f in self.plan.controller_kills_at])
        for i in range(self.plan.jobs):
            while marks and i >= marks[0][0] * self.plan.jobs:
                _, what = marks.pop(0)
                self.kill_supervisor() if what == "supervisor" else self.kill_controller()
            kind, prompt, fields, _ = self.rng.choices(KINDS, weights)[0]
            key = f"chaos-{self.plan.seed}-{i}"
            body = {"prompt": f"{prompt} #{i}", "idempotency_key": key, **fields}
            resp = self._call("POST", "/v1/jobs", json=body)
            while resp.status_code == 429:
                time.sleep(float(resp.headers.get("Retry-After", "1")))
                resp = self._call("POST", "/v1/jobs", json=body)
            resp.raise_for_status()
            self.kinds[key], self.ids[key] = kind, resp.json()["id"]
            if kind == "cancelled":
                threading.Timer(self.rng.uniform(0.05, 0.3), self._cancel, (self.ids[key],)).start()

    def _cancel(self, job_id: str) -> None:
        try:
            self._call("POST", f"/v1/jobs/{job_id}/cancel")
        except httpx.HTTPError:
            pass

    def collect(self) -> None:
        end = time.monotonic() + self.plan.finish_timeout_s
        pending = dict(self.ids)
        final: dict[str, dict[str, Any]] = {}
        while pending and time.monotonic() < end:
            for key, job_id in list(pending.items()):
                resp = self._call("GET", f"/v1/jobs/{job_id}")
                if resp.status_code == 404:
                    continue
                job = resp.json()
                if job["status"] not in ("queued", "running"):
                    final[key] = job
                    del pending[key]
            if pending:
                time.sleep(0.2)
        r = self.report
        for key, job_id in self.ids.items():
            job = final.get(key)
            if job is None:
                resp = self._call("GET", f"/v1/jobs/{job_id}")
                (r.lost if resp.status_code == 404 else r.not_ended).append(job_id)
                continue
            status = job["status"]
            r.outcomes[status] = r.outcomes.get(status, 0) + 1
            if status != "succeeded" and not job.get("error"):
                r.without_reason.append(job_id)
            if status not in EXPECTED[self.kinds[key]] and not (status == "failed" and "gave up" in (job["error"] or "")):
                r.unexpected.append(f"{job_id}: {self.kinds[key]} -> {status} ({job.get('error')})")

    def run(self) -> Report:
        t0 = time.monotonic()
        self.servers.append(start_server(self.base, engines=self.plan.engines, env=self.env))
        killer = threading.Thread(target=self.kill_engines, daemon=True)
        try:
            killer.start()
            self.submit_all()
            self.collect()
        finally:
            self.stop.set()
            killer.join(timeout=120)
            stop(self.server)
            for server in self.servers:  # every incarnation's processes, by its tag
                for proc in tagged_processes(server.tag):
                    self.report.leftovers.append(f"pid {proc.pid} {' '.join(proc.cmdline())[:120]}")
                    proc.kill()
        self.report.duration_s = time.monotonic() - t0
        return self.report
