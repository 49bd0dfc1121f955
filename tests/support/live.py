"""Live servers as real processes, for the tests and the benchmarks (``python -m bench`` imports this module too).

A server starts in a process group of its own inside the caller's session (``process_group=0``): with scheduling
autogroups on, a process in a new session gets a CPU group of its own and a client in another group can be starved
for seconds (docs/measured.md, "Scheduling autogroups"). Every process it starts inherits a unique
``LLMSUP_TEST_TAG``, so ``stop`` finds all of them (IPyParallel runs engines and nannies in sessions of their own,
and a replaced engine is no one's child): SIGTERM to the server's group, a bounded wait, then SIGKILL by pid to
whatever is left, which is returned so that a test can fail on it.

Use ``serving(base, **settings)`` (a ``with`` block), or ``start_server`` then ``finish_server``, for an ``llmsup
serve`` with the test settings (sim unless a ``backend`` is named); ``start_llmsup`` for one on an environment of the
caller's own (a restart on the same run directory, a bench); ``spawn``, ``wait_ready`` and ``stop`` for any other
server process (a wheel's ``llmsup``, ``vllm serve``). Beside them: ``free_port``, ``tagged_processes``, ``job_status``.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from .waiting import eventually

TAG_VARIABLE = "LLMSUP_TEST_TAG"
# the installed console script, as a user runs it (else the module, e.g. before `pip install -e .`)
_SCRIPT = Path(sys.executable).with_name("llmsup")
LLMSUP: tuple[str, ...] = (str(_SCRIPT),) if _SCRIPT.exists() else (sys.executable, "-m", "llmsup.supervisor.cli")
# Settings of the sim-backend server the tests share: fast heartbeat, short graces, short tokens.
SIM_TEST_ENV = {
    "LLMSUP_HEARTBEAT_MS": "200",
    "LLMSUP_INTERRUPT_GRACE_S": "0.3",
    "LLMSUP_KILL_GRACE_S": "1.5",
    "LLMSUP_RETRY_BACKOFF_S": "0.05",
    "LLMSUP_DEADLINE_S": "30",
    "LLMSUP_SIM_TOKEN_S": "0.002",
    "LLMSUP_ENGINE_START_TIMEOUT_S": "60",
}
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


class ServerExited(RuntimeError):
    """The server process ended before it was ready."""


@dataclass(frozen=True)
class ServerProcess:
    """A server started by ``spawn``: its process (the leader of its group), URL, log and tag."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    tag: str
    started_mono: float

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def spawn(name: str, argv: Sequence[str], port: int, log_path: Path, env: Mapping[str, str], cwd: Path | None = None,
          ignore_sigint: bool = False) -> ServerProcess:
    """Start ``argv`` (a server that will listen on ``port``) in its own group in this session, output to ``log_path``.

    ``ignore_sigint``: start it with SIGINT ignored, as a shell does for ``cmd &``.
    """
    tag = uuid.uuid4().hex
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(list(argv), cwd=cwd, env={**env, TAG_VARIABLE: tag}, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, process_group=0,
                                preexec_fn=_ignore_sigint if ignore_sigint else None)
    return ServerProcess(name, proc, f"http://127.0.0.1:{port}", log_path, tag, time.monotonic())


def wait_ready(server: ServerProcess, path: str, timeout: float = START_TIMEOUT_S,
               ready: Callable[[httpx.Response], bool] = lambda resp: resp.status_code == 200) -> float:
    """Poll ``GET path`` until ``ready(response)``; returns the seconds since the start.

    Raises ``ServerExited`` if the process ends first, ``AssertionError`` after ``timeout``.
    """
    with httpx.Client(base_url=server.url, timeout=2) as http:

        def answered() -> bool:
            if server.proc.poll() is not None:
                raise ServerExited(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")
            try:
                return ready(http.get(path))
            except httpx.TransportError:
                return False

        eventually(answered, timeout, f"{server.name} to answer {path} (log {server.log_path})", interval=0.05)
    return time.monotonic() - server.started_mono


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Every live process that inherited this tag (the server, and all it started: controller, engines, nannies)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TAG_VARIABLE) == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def stop(server: ServerProcess, grace: float = STOP_TIMEOUT_S) -> list[str]:
    """SIGTERM the server's group and wait up to ``grace`` for every tagged process to end; SIGKILL (by pid) what is
    left. Returns those survivors (``pid N command``)."""
    pgid = server.proc.pid  # process_group=0: the group id is the server's pid
    end = time.monotonic() + grace
    _signal_group(pgid, signal.SIGTERM)
    try:
        server.proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    left = tagged_processes(server.tag)
    if left:  # the nanny or a stopping engine may take a moment more
        try:
            eventually(lambda: not tagged_processes(server.tag), max(0.0, end - time.monotonic()), interval=0.05)
            left = []
        except AssertionError:
            left = tagged_processes(server.tag)
    survivors = []
    for proc in left:
        try:
            survivors.append(f"pid {proc.pid} {' '.join(proc.cmdline())[:160]}")
            proc.kill()
        except psutil.Error:
            pass
    _signal_group(pgid, signal.SIGKILL)
    if server.proc.poll() is None:
        server.proc.wait(timeout=10)
    return survivors


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


# llmsup serve ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveServer(ServerProcess):
    """A running ``llmsup serve``."""

    run_dir: Path
    engines: int

    @property
    def client_env(self) -> dict[str, str]:
        """``LLMSUP_URL`` / ``LLMSUP_RUN_DIR`` for clients that find the server from their environment."""
        return {"LLMSUP_URL": self.url, "LLMSUP_RUN_DIR": str(self.run_dir)}

    @property
    def admin_token(self) -> str:
        return (self.run_dir / "admin_token").read_text().strip()

    @property
    def admin(self) -> dict[str, str]:
        """The admin bearer header."""
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def api_key(self) -> str:
        """The API key a client on this machine finds in the run directory (generated by the server: none given);
        "unused" when the server runs with keys off or keys of the test's own."""
        try:
            return (self.run_dir / "api_key").read_text().strip() or "unused"
        except OSError:
            return "unused"

    @property
    def auth(self) -> dict[str, str]:
        """The API key's bearer header."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def client(self, keyed: bool = True, **kwargs: Any) -> httpx.Client:
        """An HTTP client for this server (``timeout`` 30 s unless given), sending the run directory's API key
        unless not ``keyed``."""
        headers = {**(self.auth if keyed else {}), **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30), headers=headers, **kwargs)


def start_llmsup(run_dir: Path, log_dir: Path, env: Mapping[str, str], engines: int = 2, backend: str = "sim",
                 args: Sequence[str] = (), cwd: Path | None = None, timeout: float = START_TIMEOUT_S,
                 ignore_sigint: bool = False, log_name: str = "server") -> LiveServer:
    """``llmsup serve`` with ``env`` as its whole environment; returns once ``/readyz`` counts every engine.

    A free port can be taken by someone else before the server binds it: then it starts again on another. Its output
    goes to ``log_dir/<log_name>-N.log``.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    last_log = ""
    for _attempt in range(3):
        port = free_port()
        argv = [*LLMSUP, "serve", "--engines", str(engines), "--backend", backend, "--host", "127.0.0.1",
                "--port", str(port), "--run-dir", str(run_dir), *args]
        process = spawn("llmsup serve", argv, port, _new_log(log_dir, log_name), env, cwd, ignore_sigint)
        server = LiveServer(**vars(process), run_dir=run_dir, engines=engines)
        try:
            wait_ready(server, "/readyz", timeout,
                       lambda resp: resp.status_code == 200 and resp.json().get("engines", 0) >= engines)
            return server
        except ServerExited:
            last_log = server.log_tail()
            stop(server)
            if "address already in use" not in last_log.lower():
                break
        except BaseException:
            stop(server)
            raise
    raise ServerExited(f"llmsup serve exited at start:\n{last_log}")


def _new_log(log_dir: Path, name: str) -> Path:
    """``name-N.log`` in ``log_dir``, N the first number not taken (a restarted server keeps the old log)."""
    return next(path for n in itertools.count() if not (path := log_dir / f"{name}-{n}.log").exists())


def sim_environment(base: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the sim test settings, ``env`` on top, nothing that points clients elsewhere."""
    full = {**os.environ, **SIM_TEST_ENV, **(env or {}), "IPYTHONDIR": str(base / "ipython-home"),
            "PYTHONUNBUFFERED": "1"}
    for name in ("LLMSUP_URL", "LLMSUP_RUN_DIR", "LLMSUP_ADMIN_TOKEN"):
        full.pop(name, None)
    return full


def start_server(base: Path, engines: int = 2, env: Mapping[str, str] | None = None, backend: str = "sim",
                 start_timeout_s: float = START_TIMEOUT_S) -> LiveServer:
    """``llmsup serve --backend sim`` (or ``backend``) with the test settings and ``env`` under ``base``; returns once
    all its engines serve (a real model's backend may want a longer ``start_timeout_s``)."""
    base.mkdir(parents=True, exist_ok=True)
    return start_llmsup(base / "run", base, sim_environment(base, env), engines=engines, backend=backend, cwd=base,
                        timeout=start_timeout_s)


def finish_server(server: LiveServer) -> None:
    """Stop the server; fail if any process it started survived SIGTERM (they are killed all the same)."""
    survivors = stop(server)
    assert not survivors, f"processes left after SIGTERM to llmsup serve: {survivors}\n{server.log_tail()}"


@contextmanager
def serving(base: Path, engines: int = 2, backend: str = "sim", start_timeout_s: float = START_TIMEOUT_S,
            **settings: object) -> Iterator[LiveServer]:
    """A server (sim unless ``backend``) with the test settings and ``settings`` (name -> value, e.g.
    ``queue_max=2``) for a ``with`` block; stopped after it, failing if anything it started survived."""
    server = start_server(base, engines, {f"LLMSUP_{name.upper()}": str(value) for name, value in settings.items()},
                          backend, start_timeout_s)
    try:
        yield server
    finally:
        finish_server(server)


def job_status(client: httpx.Client, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """``GET /v1/jobs/{job_id}`` as JSON."""
    body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    return body
