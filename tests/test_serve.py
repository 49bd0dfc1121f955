"""`llmsup serve` as a real process: stopping leaves nothing behind, restarts lose nothing."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from support.live import alive, sim_environment, start_llmsup, stop, tagged_processes
from support.waiting import eventually

pytestmark = [pytest.mark.real, pytest.mark.timeout(120)]


class Server:
    """``llmsup serve`` (sim backend) under test, started as a user would, its processes found by tag."""

    def __init__(self, run_dir: Path, ignore_sigint: bool = False, engines: int = 2, **env: str) -> None:
        full_env = sim_environment(run_dir.parent, {"LLMSUP_HEARTBEAT_MS": "200", "LLMSUP_SIM_TOKEN_S": "0.002", **env})
        self.live = start_llmsup(run_dir, run_dir.parent, full_env, engines=engines, args=["--log-level", "warning"],
                                 ignore_sigint=ignore_sigint, log_name="serve")  # serve-N.log beside run_dir
        self.proc = self.live.proc
        self.http = self.live.client(timeout=10)

    def tree(self) -> list[psutil.Process]:
        """Every process it started (its children, and engines and nannies in sessions of their own)."""
        return [p for p in tagged_processes(self.live.tag) if p.pid != self.proc.pid]

    def submit(self, prompt: str, **body: Any) -> dict[str, Any]:
        resp = self.http.post("/v1/jobs", json={"prompt": prompt, **body})
        assert resp.status_code == 202, resp.text
        return resp.json()

    def wait_job(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.http.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] not in ("queued", "running") else None

        return eventually(done, timeout, f"job {job_id}")

    def close(self) -> None:
        """Kill whatever is left of it (tests check their own clean stop first)."""
        self.http.close()
        stop(self.live, grace=0)




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
        eventually(lambda: not alive(tree), 15, "every child process gone")
    finally:
        kill_all(tree)
        server.close()


def test_interrupt_works_when_started_with_sigint_ignored(tmp_path: Path) -> None:
    """A shell's `cmd &` leaves SIGINT ignored; the watchdog's SIGINT must still interrupt."""
    server = Server(tmp_path / "run", ignore_sigint=True, engines=1)
    tree = server.tree()
    try:
        job = server.wait_job(server.submit("runaway [sim:hang]", deadline_s=1)["id"])
        assert job["status"] == "timed_out" and job["output"].startswith("runaway")
        assert "interrupted" in job["error"]  # SIGINT worked: no SIGKILL needed
        nxt = server.wait_job(server.submit("next")["id"])
        assert nxt["status"] == "succeeded" and nxt["engine"]["pid"] == job["engine"]["pid"]
        server.proc.send_signal(signal.SIGINT)  # Ctrl-C still stops the server
        assert server.proc.wait(timeout=60) in (0, 130, -signal.SIGINT)
        eventually(lambda: not alive(tree), 15, "every child process gone")
    finally:
        kill_all(tree)
        server.close()


def test_restart_after_sigkill_requeues_running_and_runs_queued(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = Server(run_dir, engines=1)
    old_tree = first.tree()
    second = None
    try:
        running = first.submit("long one [sim:slow=0.05]", max_tokens=100)  # 5 s: killed while it runs
        queued = [first.submit(f"queued {i}", max_tokens=3) for i in range(3)]
        eventually(lambda: first.http.get(f"/v1/jobs/{running['id']}").json()["status"] == "running", 20, "running")
        os.kill(first.proc.pid, signal.SIGKILL)  # the supervisor dies; its cluster lives on
        first.proc.wait()
        assert alive(old_tree), "controller and engines outlive a SIGKILLed supervisor"
        second = Server(run_dir, engines=1, LLMSUP_MAX_ATTEMPTS="3")
        eventually(lambda: not alive(old_tree), 15, "the old cluster stopped by the new supervisor")
        again = second.wait_job(running["id"], 60)
        assert again["status"] == "succeeded" and again["attempts"] == 2 and again["tokens"] == 100
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
