"""Servers the vLLM benchmarks start: bare ``vllm serve`` and ``llmsup serve`` with the vLLM backend.

Both are started in the benchmark's own session (``process_group=0``: a group we can kill, not a new
session). With ``kernel.sched_autogroup_enabled=1`` a process in another session gets its own scheduling group,
and a client in one group was starved of CPU for seconds while a server in another generated (FACTS.md).
IPyParallel still starts llmsup's engine in a new session of its own: that is part of what is measured.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent

# The model settings both servers run with (llmsup's CPU defaults, engines/vllm_settings.py).
DTYPE = "float32"
ENFORCE_EAGER = True
MAX_MODEL_LEN = 2048
KV_CACHE_GIB = 1
SEED = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
        VLLM_CPU_KVCACHE_SPACE=str(KV_CACHE_GIB), VLLM_CACHE_ROOT=str(cache_dir / "vllm"),
        TORCHINDUCTOR_CACHE_DIR=str(cache_dir / "inductor"),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )
    return env


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


class Server:
    """A server process in its own process group (same session); stopped with SIGTERM, then SIGKILL, by group."""

    name = "server"
    ready_path = "/v1/models"

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, process_group=0, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.start_s = float("nan")

    def wait_ready(self, timeout: float = 300) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    self.start_s = time.monotonic() - self.t0
                    return self.start_s
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    def stop(self, grace: float = 30) -> None:
        """SIGTERM to the server's process group, SIGKILL to the group after ``grace`` seconds."""
        pgid = self.proc.pid  # process_group=0: the group id is the server's pid
        if self.proc.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # leftovers of the group (e.g. vLLM's EngineCore), if any
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()


class VllmServe(Server):
    name = "vllm serve"

    def __init__(self, model: str, work: Path) -> None:
        port = free_port()
        argv = [sys.executable, "-m", "bench.vllm_cli", "serve", model, "--port", str(port), "--host", "127.0.0.1",
                "--dtype", DTYPE, "--max-model-len", str(MAX_MODEL_LEN), "--gpu-memory-utilization", "0.3",
                "--seed", str(SEED), "--uvicorn-log-level", "warning"]
        if ENFORCE_EAGER:
            argv.append("--enforce-eager")
        super().__init__(argv, base_env(work / "cache-vllm-serve"), work / "vllm-serve.log", port)


class LlmsupServe(Server):
    name = "llmsup serve"
    ready_path = "/readyz"

    def __init__(self, model: str, work: Path, slots: int | None = 32, engine_threads: int | None = None,
                 extra_env: dict[str, str] | None = None, backend: str = "vllm", tag: str = "") -> None:
        port = free_port()
        self.run_dir = work / f"llmsup-run{tag}"
        env = base_env(work / "cache-llmsup")
        if backend == "vllm":
            options = {"dtype": DTYPE, "enforce_eager": ENFORCE_EAGER, "max_model_len": MAX_MODEL_LEN,
                       "kv_cache_gib": KV_CACHE_GIB, "seed": SEED}
            env["LLMSUP_ENGINE_OPTIONS"] = json.dumps(options)
        env["LLMSUP_QUEUE_MAX"] = "100000"
        if engine_threads:
            env["LLMSUP_ENGINE_THREADS"] = str(engine_threads)
        env.update(extra_env or {})
        argv = [sys.executable, "-m", "llmsup.supervisor.cli", "serve", "--backend", backend, "--engines", "1",
                "--model", model, "--port", str(port), "--run-dir", str(self.run_dir), "--log-level", "warning"]
        if slots:
            argv += ["--slots-per-engine", str(slots)]
        super().__init__(argv, env, work / f"llmsup-serve{tag}.log", port)

    def admin_headers(self) -> dict[str, str]:
        token = (self.run_dir / "admin_token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def engines(self) -> list[dict[str, Any]]:
        resp = httpx.get(self.url + "/admin/engines", headers=self.admin_headers(), timeout=10)
        resp.raise_for_status()
        return resp.json()["engines"]
