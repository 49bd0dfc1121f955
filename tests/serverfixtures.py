"""A live ``llmsup serve`` (sim backend) for the client and notebook tests.

The server runs in its own process group, in this session (``process_group=0``, see docs/measured.md on
scheduling groups). Every process it starts inherits a unique ``LLMSUP_TEST_TAG``, so teardown can
find all of them (engines run in sessions of their own, and a replaced engine is no one's child) and
check that SIGTERM to the server's group stopped each one. Whatever survives is SIGKILLed by pid and
reported.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

SERVER_ENV = {
    "LLMSUP_HEARTBEAT_MS": "200",
    "LLMSUP_INTERRUPT_GRACE_S": "0.3",
    "LLMSUP_KILL_GRACE_S": "1.5",
    "LLMSUP_RETRY_BACKOFF_S": "0.05",
    "LLMSUP_DEADLINE_S": "30",
    "LLMSUP_SIM_TOKEN_S": "0.002",
    "LLMSUP_ENGINE_START_TIMEOUT_S": "60",
}
# Known leak, not this project's processes to keep: an IPyParallel nanny whose engine died can hang for ever in
# zmq ``Context.term()`` (ipyparallel/engine/nanny.py, sockets with LINGER -1 and messages for a dead peer). It
# runs in a session of its own, outside the server's process group and its ledger. Such survivors are
# SIGKILLed and reported as a warning; any other survivor fails the test.
TOLERATED_LEFTOVERS: tuple[str, ...] = ()
START_TIMEOUT_S = 90.0
# the installed console script, as a user runs it (else the module, e.g. before `pip install -e .`)
_SCRIPT = Path(sys.executable).with_name("llmsup")
LLMSUP = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "llmsup.supervisor.cli"]
STOP_TIMEOUT_S = 30.0


@dataclass
class LiveServer:
    proc: subprocess.Popen
    url: str
    run_dir: Path
    log_path: Path
    tag: str
    engines: int
    client_env: dict[str, str] = field(default_factory=dict)  # LLMSUP_URL / LLMSUP_RUN_DIR for clients

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Every live process that inherited this server's tag (the server, controller, engines, nannies)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("LLMSUP_TEST_TAG") == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _wait_ready(server: LiveServer, deadline: float) -> bool:
    """True when /readyz answers 200 with every engine serving; False if the server exited first."""
    with httpx.Client(base_url=server.url, timeout=2) as http:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                return False
            try:
                resp = http.get("/readyz")
                if resp.status_code == 200 and resp.json().get("engines", 0) >= server.engines:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"llmsup serve not ready in time:\n{server.log_tail()}")


def start_server(base: Path, engines: int = 2, env: dict[str, str] | None = None, backend: str = "sim",
                 start_timeout_s: float = START_TIMEOUT_S) -> LiveServer:
    """Start ``llmsup serve --backend sim`` (or ``backend``) under ``base`` and wait until all its engines serve."""
    base.mkdir(parents=True, exist_ok=True)
    run_dir = base / "run"
    tag = uuid.uuid4().hex
    full_env = {**os.environ, **SERVER_ENV, **(env or {}), "LLMSUP_TEST_TAG": tag,
                "IPYTHONDIR": str(base / "ipython-home"), "PYTHONUNBUFFERED": "1"}
    for name in ("LLMSUP_URL", "LLMSUP_RUN_DIR", "LLMSUP_ADMIN_TOKEN"):
        full_env.pop(name, None)
    last_log = ""
    for attempt in range(3):  # a free port can be taken by someone else before the server binds it
        port = free_port()
        log_path = base / f"server-{attempt}.log"
        cmd = [*LLMSUP, "serve", "--engines", str(engines), "--backend", backend,
               "--host", "127.0.0.1", "--port", str(port), "--run-dir", str(run_dir)]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=base, env=full_env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, process_group=0)
        server = LiveServer(proc, f"http://127.0.0.1:{port}", run_dir, log_path, tag, engines,
                            {"LLMSUP_URL": f"http://127.0.0.1:{port}", "LLMSUP_RUN_DIR": str(run_dir)})
        try:
            if _wait_ready(server, time.monotonic() + start_timeout_s):
                return server
        except BaseException:
            stop_server(server)
            raise
        last_log = server.log_tail()
        stop_server(server)
        if "address already in use" not in last_log.lower():
            break
    raise RuntimeError(f"llmsup serve exited at start:\n{last_log}")


def stop_server(server: LiveServer) -> list[str]:
    """SIGTERM the server's group and wait; SIGKILL (by pid) whatever is left. Returns the survivors
    (``pid N command``), tolerated ones included."""
    pgid = server.proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    end = time.monotonic() + STOP_TIMEOUT_S
    try:
        server.proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    left = tagged_processes(server.tag)
    while left and time.monotonic() < end:  # the nanny or a stopping engine may take a moment more
        time.sleep(0.05)
        left = tagged_processes(server.tag)
    survivors = []
    for proc in left:
        try:
            survivors.append(f"pid {proc.pid} {' '.join(proc.cmdline())[:160]}")
            proc.kill()
        except psutil.Error:
            pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if server.proc.poll() is None:
        server.proc.wait(timeout=10)
    return survivors


def ledger_pids(server: LiveServer) -> list[int]:
    try:
        data = json.loads((server.run_dir / "processes.json").read_text())
    except (OSError, ValueError):
        return []
    return [int(p["pid"]) for p in (data.get("processes") or {}).values()]


def finish_server(server: LiveServer) -> None:
    """Stop the server; fail if anything but a tolerated leftover survived SIGTERM (those: a warning)."""
    survivors = stop_server(server)
    tolerated = [s for s in survivors if any(name in s for name in TOLERATED_LEFTOVERS)]
    if tolerated:
        warnings.warn(f"killed IPyParallel nannies left after llmsup serve stopped: {tolerated}", stacklevel=2)
    others = [s for s in survivors if s not in tolerated]
    assert not others, f"processes left after SIGTERM to llmsup serve: {others}\n{server.log_tail()}"


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for a test module; teardown fails if any of its processes survive."""
    server = start_server(tmp_path_factory.mktemp("llmsup"))
    yield server
    finish_server(server)


@pytest.fixture
def server_env(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> LiveServer:
    """The live server, with LLMSUP_URL / LLMSUP_RUN_DIR set so clients find it without arguments."""
    for name, value in live_server.client_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LLMSUP_ADMIN_TOKEN", raising=False)
    return live_server
