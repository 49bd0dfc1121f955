"""Stands in for vLLM's ``tests/utils.py`` when vLLM's entrypoint tests run against llmsup.

``RemoteOpenAIServer(model, args)`` starts ``llmsup serve`` (vLLM backend, one batched engine, the tiny local
model named by ``LLMSUP_VLLM_TESTS_MODEL``) that serves it under the name the test asked for, and answers
the same ``url_for`` / ``get_client`` / ``get_async_client`` calls as vLLM's. ``--max-model-len``,
``--max-logprobs``, ``--runner``, ``--convert`` and ``--hf-overrides`` are passed on to the engine,
``--enable-auto-tool-choice``, ``--tool-call-parser``, ``--reasoning-parser`` and ``--chat-template`` to llmsup's
settings of the same names; the other ``vllm serve`` flags are left out.

Pooling models: a test of an embedding model (``--runner pooling``, or a hub name of one: e5, bge, gte...) gets the
tiny model as a Matryoshka embedding model (``LLMSUP_VLLM_TESTS_EMBED_MODEL``, ``--convert embed``); a test of a
reranker or classifier (a hub name with reranker, cross-encoder, apeach) the tiny one-label classifier
(``LLMSUP_VLLM_TESTS_RERANK_MODEL``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import openai
import requests

START_TIMEOUT_S = 600.0
ROCM_EXTRA_ARGS: list[str] = []  # vLLM's extra flags on ROCm (none on this platform)
ROCM_ENGINE_KWARGS: dict[str, Any] = {}
EMBEDDERS = re.compile(r"e5|bge-(small|base|large|m3)|gte|embed|MiniLM-L6-v2$|nomic|arctic", re.I)
RERANKERS = re.compile(r"rerank|cross-encoder|apeach|classif", re.I)
SETTINGS = {"--tool-call-parser": "LLMSUP_TOOL_CALL_PARSER", "--reasoning-parser": "LLMSUP_REASONING_PARSER",
            "--chat-template": "LLMSUP_CHAT_TEMPLATE"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


class RemoteOpenAIServer:
    DUMMY_API_KEY = "token-abc123"

    def __init__(self, model: str, vllm_serve_args: list[str], *, env_dict: dict[str, str] | None = None,
                 seed: int | None = 0, auto_port: bool = True, max_wait_seconds: float | None = None,
                 **_: Any) -> None:
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.uds = None
        self.run_dir = tempfile.mkdtemp(prefix="llmsup-vllm-tests-")
        options: dict[str, Any] = {}
        if _flag(vllm_serve_args, "--max-model-len"):  # past the tiny model's 2048 positions: RoPE goes on
            options["max_model_len"] = int(_flag(vllm_serve_args, "--max-model-len") or 0)
        engine_args: dict[str, Any] = {}
        if _flag(vllm_serve_args, "--max-logprobs"):
            engine_args["max_logprobs"] = int(_flag(vllm_serve_args, "--max-logprobs") or 0)
        served = os.environ["LLMSUP_VLLM_TESTS_MODEL"]
        if RERANKERS.search(model) and os.environ.get("LLMSUP_VLLM_TESTS_RERANK_MODEL"):
            served, engine_args["runner"] = os.environ["LLMSUP_VLLM_TESTS_RERANK_MODEL"], "pooling"
        elif (_flag(vllm_serve_args, "--runner") == "pooling" or EMBEDDERS.search(model)) and os.environ.get(
                "LLMSUP_VLLM_TESTS_EMBED_MODEL"):
            served = os.environ["LLMSUP_VLLM_TESTS_EMBED_MODEL"]
            engine_args.update(runner="pooling", convert=_flag(vllm_serve_args, "--convert") or "embed")
        overrides = _flag(vllm_serve_args, "--hf-overrides") or _flag(vllm_serve_args, "--hf_overrides")
        if overrides:
            engine_args["hf_overrides"] = json.loads(overrides)
        if engine_args:
            options["engine_args"] = engine_args
        settings = {var: _flag(vllm_serve_args, flag) for flag, var in SETTINGS.items() if _flag(vllm_serve_args, flag)}
        if "--enable-auto-tool-choice" in vllm_serve_args:
            settings["LLMSUP_ENABLE_AUTO_TOOL_CHOICE"] = "true"
        key = _flag(vllm_serve_args, "--api-key")  # vllm serve without one is open: so is llmsup then
        settings.update({"LLMSUP_API_KEYS": key} if key else {"LLMSUP_REQUIRE_API_KEYS": "off"})
        env = {**os.environ, **(env_dict or {}), **settings,
               "LLMSUP_MODEL": served, "LLMSUP_SERVED_MODEL_NAME": model,
               "LLMSUP_SLOTS_PER_ENGINE": "8", "LLMSUP_ENGINE_OPTIONS": json.dumps(options),
               "LLMSUP_ENGINE_START_TIMEOUT_S": "500", "LLMSUP_ENGINE_BEAT_TIMEOUT_S": "90",
               "LLMSUP_DEADLINE_S": "300", "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1",
               "IPYTHONDIR": os.path.join(self.run_dir, "ipython-home")}
        cmd = [sys.executable, "-m", "llmsup.supervisor.cli", "serve", "--engines", "1", "--backend", "vllm",
               "--host", self.host, "--port", str(self.port), "--run-dir", os.path.join(self.run_dir, "run")]
        self.log_path = os.path.join(self.run_dir, "server.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         process_group=0)
        self._wait(max_wait_seconds or START_TIMEOUT_S)

    def _wait(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llmsup serve exited; log: {self.log_path}")
            try:
                if requests.get(self.url_for("health"), timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"llmsup serve not ready in {timeout}s; log: {self.log_path}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def __enter__(self) -> "RemoteOpenAIServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url_root(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url_for(self, *parts: str) -> str:
        path = "/".join(part.strip("/") for part in parts if part)
        return f"{self.url_root}/{path}"

    def get_client(self, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("timeout", 600)
        return openai.OpenAI(base_url=self.url_for("v1"), api_key=self.DUMMY_API_KEY, max_retries=0, **kwargs)

    def get_async_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("timeout", 600)
        return openai.AsyncOpenAI(base_url=self.url_for("v1"), api_key=self.DUMMY_API_KEY, max_retries=0, **kwargs)
