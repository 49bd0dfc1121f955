"""`llmsup serve` as a real process: stopping leaves nothing behind, restarts lose nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

pytestmark = pytest.mark.timeout(120)
LLMSUP = [sys.executable, "-m", "llmsup.supervisor.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Server:
    def __init__(self, run_dir: Path, ignore_sigint: bool = False, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = dict(os.environ, LLMSUP_HEARTBEAT_MS="200", LLMSUP_SIM_TOKEN_S="0.002", LLMSUP_BACKEND="sim", **env)
        preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
        self.log = open(run_dir.parent / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [*LLMSUP, "serve", "--port", str(self.port), "--run-dir", str(run_dir), "--log-level", "warning"],
            env=full_env, stdout=self.log, stderr=subprocess.STDOUT, process_group=0, preexec_fn=preexec,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)
        wait_for(self._ready, 60, "server ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}")
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def tree(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def submit(self, prompt: str, **body: Any) -> dict[str, Any]:
        resp = self.http.post("/v1/jobs", json={"prompt": prompt, **body})
        assert resp.status_code == 202, resp.text
        return resp.json()

    def wait_job(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.http.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] not in ("queued", "running") else None

        return wait_for(done, timeout, f"job {job_id}")

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def kill_all(procs: list[psutil.Process]) -> None:
    for p in alive(procs):
        p.kill()


def test_sigterm_stops_everything_it_started(tmp_path: Path) -> None:
    server = Server(tmp_path / "run")
    tree = server.tree()
    try:
        assert len([p for p in tree if "ipyparallel.engine" in " ".join(p.cmdline())]) >= 2
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        wait_for(lambda: not alive(tree), 15, "every child process gone")
    finally:
        kill_all(tree)
        server.close()


def test_interrupt_works_when_started_with_sigint_ignored(tmp_path: Path) -> None:
    """A shell's `cmd &` leaves SIGINT ignored; the watchdog's SIGINT must still interrupt."""
    server = Server(tmp_path / "run", ignore_sigint=True, LLMSUP_ENGINES="1")
    tree = server.tree()
    try:
        job = server.wait_job(server.submit("runaway [sim:hang]", deadline_s=1)["id"])
        assert job["status"] == "timed_out" and job["output"].startswith("runaway")
        assert "interrupted" in job["error"]  # SIGINT worked: no SIGKILL needed
        nxt = server.wait_job(server.submit("next")["id"])
        assert nxt["status"] == "succeeded" and nxt["engine"]["pid"] == job["engine"]["pid"]
        server.proc.send_signal(signal.SIGINT)  # Ctrl-C still stops the server
        assert server.proc.wait(timeout=60) in (0, 130, -signal.SIGINT)
        wait_for(lambda: not alive(tree), 15, "every child process gone")
    finally:
        kill_all(tree)
        server.close()


def test_restart_after_sigkill_requeues_running_and_runs_queued(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = Server(run_dir, LLMSUP_ENGINES="1")
    old_tree = first.tree()
    second = None
    try:
        running = first.submit("long one [sim:slow=0.05]", max_tokens=400)
        queued = [first.submit(f"queued {i}", max_tokens=3) for i in range(3)]
        wait_for(lambda: first.http.get(f"/v1/jobs/{running['id']}").json()["status"] == "running", 20, "running")
        os.kill(first.proc.pid, signal.SIGKILL)  # the supervisor dies; its cluster lives on
        first.proc.wait()
        assert alive(old_tree), "controller and engines outlive a SIGKILLed supervisor"
        second = Server(run_dir, LLMSUP_ENGINES="1", LLMSUP_MAX_ATTEMPTS="3")
        wait_for(lambda: not alive(old_tree), 15, "the old cluster stopped by the new supervisor")
        again = second.wait_job(running["id"], 60)
        assert again["status"] == "succeeded" and again["attempts"] == 2 and again["tokens"] == 400
        for q in queued:
            assert second.wait_job(q["id"])["status"] == "succeeded"
    finally:
        kill_all(old_tree)
        first.close()
        if second is not None:
            tree = second.tree()
            second.proc.send_signal(signal.SIGTERM)
            second.proc.wait(timeout=60)
            kill_all(tree)
            second.close()
