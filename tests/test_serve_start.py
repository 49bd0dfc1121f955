"""`llmsup serve` start-up as a process: a model that cannot load ends it with the error, a signal at any moment of
the start stops everything within 10 s, and a started server says where it is in one banner."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from llmsup.supervisor.cli.engine_lines import LogFollower
from support.live import LLMSUP, ServerProcess, free_port, sim_environment, spawn, stop, tagged_processes, wait_ready
from support.waiting import eventually

pytestmark = pytest.mark.timeout(240)
REAL = pytest.mark.real  # `llmsup serve` as a process (the test of the log lines needs none)
STOP_WITHIN_S = 10.0


def start(tmp_path: Path, *args: str, backend: str = "sim", env: dict[str, str] | None = None) -> ServerProcess:
    port = free_port()
    argv = [*LLMSUP, "serve", *args, "--backend", backend, "--port", str(port), "--run-dir", str(tmp_path / "run")]
    return spawn("llmsup serve", argv, port, tmp_path / "serve.log", sim_environment(tmp_path, env), cwd=tmp_path)


def log_has(server: ServerProcess, text: str) -> bool:
    if server.proc.poll() is not None:
        raise AssertionError(f"llmsup serve exited early ({server.proc.returncode}):\n{server.log_tail()}")
    return text in server.log_tail(200_000)


def test_the_backends_key_lines_are_picked_from_an_engine_log(tmp_path: Path) -> None:
    log = tmp_path / "engine-e0.log"
    log.write_text(
        "2026-12-04 19:13:56,676 INFO vllm.model_executor.model_loader.default_loader: Loading weights took 0.33 s\n"
        "2026-12-04 19:13:56,700 INFO vllm.v1.worker.cpu_model_runner: Starting to load model m...\n"
        "2026-12-04 19:14:01,851 INFO vllm.v1.core.kv_cache_utils: CPU KV cache size: 131,072 tokens, Maximum "
        "concurrency for 2,048 tokens per request: 64.00x\n"
        "2026-12-04 19:14:02,000 WARNING py.warnings: x.py:1: FutureWarning: old\n"
        "2026-12-04 19:14:03,000 ERROR vllm.v1.engine.core: out of memory\n"
        "2026-12-04 19:14:04,000 INFO vllm.v1.engine.core: init engine (profile, create kv cache, warmup model) took")
    follower = LogFollower()
    assert follower.read("0", str(log)) == [
        "engine 0: INFO vllm.model_executor.model_loader.default_loader: Loading weights took 0.33 s",
        "engine 0: INFO vllm.v1.core.kv_cache_utils: CPU KV cache size: 131,072 tokens, Maximum concurrency for "
        "2,048 tokens per request: 64.00x",
        "engine 0: ERROR vllm.v1.engine.core: out of memory"]  # the last line is not complete yet
    with log.open("a") as f:
        f.write(" 3.43 s\n")
    assert follower.read("0", str(log)) == [
        "engine 0: INFO vllm.v1.engine.core: init engine (profile, create kv cache, warmup model) took 3.43 s"]
    assert follower.read("0", str(log)) == [] and follower.read("1", str(tmp_path / "missing.log")) == []


@REAL
def test_a_model_path_that_is_not_there_ends_the_server_with_the_error(tmp_path: Path) -> None:
    t0 = time.monotonic()
    server = start(tmp_path, str(tmp_path / "no-such-model"), "--engines", "2", "--standby", "0", backend="transformers")
    try:
        rc = server.proc.wait(timeout=60)
        took = time.monotonic() - t0
        last = server.log_tail().strip().splitlines()[-1]
        assert rc == 1, server.log_tail()
        assert last.startswith("llmsup: the model cannot be loaded") and "no-such-model does not exist" in last, last
        assert took < 60
        assert not tagged_processes(server.tag), "processes left after the failed start"
    finally:
        stop(server, grace=5)


@pytest.mark.parametrize(("moment", "sig"), [
    ("controller started", signal.SIGTERM),  # the controller up, no engine yet
    ("starting: start", signal.SIGTERM),  # engines registered, their init running
    ("starting: load", signal.SIGINT),  # a model loading (Ctrl-C)
    ("starting: load", signal.SIGTERM),
])
def test_a_signal_during_start_up_stops_everything_within_10s(tmp_path: Path, tiny_model: str,  # noqa: F811
                                                              moment: str, sig: signal.Signals) -> None:
    server = start(tmp_path, tiny_model, "--engines", "2", "--standby", "0", "--log-level", "info",
                   backend="transformers")
    try:
        eventually(lambda: log_has(server, moment), 120, f"the log to say {moment!r}", interval=0.02)
        sent = time.monotonic()
        server.proc.send_signal(sig)
        rc = server.proc.wait(timeout=STOP_WITHIN_S)
        eventually(lambda: not tagged_processes(server.tag), max(0.1, sent + STOP_WITHIN_S - time.monotonic()),
                   "every process of the server gone within 10 s of the signal", interval=0.05)
        assert rc == 128 + sig, server.log_tail()
        assert "during start-up: stopping everything" in server.log_tail()
    finally:
        assert not stop(server, grace=5)


@REAL
def test_the_ready_banner_says_where_the_server_and_its_key_are(tmp_path: Path) -> None:
    server = start(tmp_path, "--engines", "1", "--standby", "0")
    try:
        wait_ready(server, "/readyz")
        eventually(lambda: log_has(server, "dashboard"), 10, "the banner")
        text = server.log_tail(200_000)
        banner = text[text.index("llmsup ready at"):]
        key_file = tmp_path / "run" / "api_key"
        assert f"llmsup ready at {server.url}" in banner
        assert f"API key    {key_file.resolve()}" in banner and "1 serving: " in banner
        assert f"{server.url}/dashboard" in banner and "backend sim" in banner
        assert text.count("llmsup ready at") == 1
    finally:
        assert not stop(server)


@REAL
def test_sigterm_once_serving_exits_0_leaving_nothing(tmp_path: Path) -> None:
    server = start(tmp_path, "--engines", "1", "--standby", "0")
    try:
        wait_ready(server, "/readyz")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
        eventually(lambda: not tagged_processes(server.tag), 15, "every process gone")
    finally:
        assert not stop(server, grace=5)

