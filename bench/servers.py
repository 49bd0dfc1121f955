"""Servers the vLLM benchmarks start: bare ``vllm serve`` and ``llmsup serve`` with the vLLM backend.

Both are started, waited for and stopped by ``tests/support/live.py``, the module the tests use too: in the
benchmark's own session (``process_group=0``: a group we can kill, not a new session: with scheduling autogroups
a client in one session was starved of CPU for seconds while a server in another generated, docs/measured.md,
"Scheduling autogroups"), every process they start tagged, and whatever survives SIGTERM killed by pid.
IPyParallel still starts llmsup's engine in a new session of its own: that is part of what is measured.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.support import live

ROOT = Path(__file__).resolve().parent.parent

# The model settings both servers run with (llmsup's CPU defaults, engines/vllm_settings.py).
DTYPE = "float32"
ENFORCE_EAGER = True
MAX_MODEL_LEN = 2048
KV_CACHE_GIB = 1
SEED = 0
API_KEY = "bench-key"  # both servers require it (llmsup requires a key by default; bare vllm serve is given the same)
free_port = live.free_port


def base_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", OPENAI_API_KEY=API_KEY,
        VLLM_CPU_KVCACHE_SPACE=str(KV_CACHE_GIB), VLLM_CACHE_ROOT=str(cache_dir / "vllm"),
        TORCHINDUCTOR_CACHE_DIR=str(cache_dir / "inductor"),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )
    return env


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


class Server:
    """A server process: ``wait_ready`` polls ``ready_path``; ``stop`` is SIGTERM to its group, then SIGKILL."""

    name = "server"
    ready_path = "/health"  # keyless
    headers = {"Authorization": f"Bearer {API_KEY}"}  # for a client of its API (vllm bench serve: OPENAI_API_KEY)

    def __init__(self, process: live.ServerProcess) -> None:
        self.process = process
        self.url = process.url
        self.log_path = process.log_path
        self.start_s = float("nan")

    def wait_ready(self, timeout: float = 300) -> float:
        try:
            self.start_s = live.wait_ready(self.process, self.ready_path, timeout)
        except BaseException:
            self.stop()
            raise
        return self.start_s

    def stop(self, grace: float = 30) -> None:
        live.stop(self.process, grace)


class VllmServe(Server):
    name = "vllm serve"

    def __init__(self, model: str, work: Path) -> None:
        port = free_port()
        argv = [sys.executable, "-m", "bench.vllm_cli", "serve", model, "--port", str(port), "--host", "127.0.0.1",
                "--dtype", DTYPE, "--max-model-len", str(MAX_MODEL_LEN), "--gpu-memory-utilization", "0.3",
                "--seed", str(SEED), "--uvicorn-log-level", "warning", "--api-key", API_KEY]
        if ENFORCE_EAGER:
            argv.append("--enforce-eager")
        env = base_env(work / "cache-vllm-serve")
        super().__init__(live.spawn(self.name, argv, port, work / "vllm-serve.log", env, cwd=ROOT))


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
        argv = [*live.LLMSUP, "serve", "--backend", backend, "--engines", "1", "--model", model, "--port", str(port),
                "--run-dir", str(self.run_dir), "--log-level", "warning", "--api-key", API_KEY]
        if slots:
            argv += ["--slots-per-engine", str(slots)]
        super().__init__(live.spawn(self.name, argv, port, work / f"llmsup-serve{tag}.log", env, cwd=ROOT))

    def admin_headers(self) -> dict[str, str]:
        token = (self.run_dir / "admin_token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def engines(self) -> list[dict[str, Any]]:
        resp = httpx.get(self.url + "/admin/engines", headers=self.admin_headers(), timeout=10)
        resp.raise_for_status()
        engines: list[dict[str, Any]] = resp.json()["engines"]
        return engines
