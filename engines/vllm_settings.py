"""vLLM settings per device: environment variables and ``vllm.LLM`` arguments.

CPU (no GPU in the config, or vLLM's CPU build):

- ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: EngineCore runs inside the engine
  process. Start ~3 s instead of ~25 s, one process instead of three (nothing
  to orphan, no worker busy-spinning a core while idle), and a SIGINT reaches
  the process that runs the model. Trade-off: scheduling, detokenization and
  the model run in turn in one thread (no overlap), and vLLM then patches
  ``torch.set_num_threads`` process-wide. ``options["multiprocessing"]``
  (or the variable set in the environment) overrides it.
- ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB; ``options["kv_cache_gib"]``).
- ``enforce_eager=True``: no torch.compile warm-up (~10-30 s per start here,
  and its AOT cache failed to reload), and ``dtype="float32"``: vLLM's eager
  bfloat16 CPU path died with SIGILL on this host (an AVX-512/AMX Xeon).
  Compiled bf16 is ~1.8x faster per token once started: set
  ``options={"enforce_eager": False, "dtype": "bfloat16"}`` for long-lived engines.
- ``max_model_len=2048`` (``options["max_model_len"]``).

GPU: vLLM's defaults (multiprocessing on, CUDA graphs, dtype auto),
``tensor_parallel_size`` = number of GPUs pinned to the engine,
``gpu_memory_utilization`` 0.9 (the supervisor lowers it for engines that
share a GPU). ``trust_remote_code`` and ``max_num_seqs`` (the engine's slots)
pass as they are; ``max_num_seqs`` unset is vLLM's own default for the device, asked of vLLM as ``vllm serve``
gets it (:func:`default_max_num_seqs`: 256, 1,024 on GPUs of 70 GiB and more, 128 per CPU worker);
``options["engine_args"]`` (``--engine-arg KEY=VALUE``)
passes any other ``vllm.LLM`` argument through, and wins over the above.
"""

from __future__ import annotations

import os
from typing import Any

CPU_MAX_MODEL_LEN = 2048
# options that are ``vllm.LLM`` arguments of the same name, on any device (``llmsup serve`` flags: vLLM's names)
PASSED_THROUGH = ("trust_remote_code", "max_num_seqs")


def gpu_count(gpu: str | None) -> int:
    return len([d for d in (gpu or "").split(",") if d.strip() and d.strip() != "-1"])


def vllm_env(options: dict[str, Any], on_gpu: bool, environ: dict[str, str]) -> dict[str, str]:
    """Environment variables to set before vLLM starts (explicit options win over the environment)."""
    env = {"VLLM_NO_USAGE_STATS": environ.get("VLLM_NO_USAGE_STATS", "1")}
    if "multiprocessing" in options:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if options["multiprocessing"] else "0"
    elif not on_gpu:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not on_gpu:
        kv = options.get("kv_cache_gib")
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv) if kv is not None else environ.get("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def llm_kwargs(model: str, options: dict[str, Any], on_gpu: bool, gpu: str | None) -> dict[str, Any]:
    """Arguments for ``vllm.LLM``."""
    kwargs: dict[str, Any] = {"model": model, "tokenizer": model, "seed": int(options.get("seed", 0))}
    if on_gpu:
        kwargs["tensor_parallel_size"] = int(options.get("tensor_parallel_size") or max(1, gpu_count(gpu)))
        kwargs["gpu_memory_utilization"] = float(options.get("gpu_memory_utilization", 0.9))
        kwargs["dtype"] = options.get("dtype", "auto")
        kwargs["enforce_eager"] = bool(options.get("enforce_eager", False))
        if options.get("max_model_len"):
            kwargs["max_model_len"] = int(options["max_model_len"])
    else:
        kwargs["dtype"] = options.get("dtype", "float32")
        kwargs["enforce_eager"] = bool(options.get("enforce_eager", True))
        kwargs["max_model_len"] = int(options.get("max_model_len", CPU_MAX_MODEL_LEN))
    for name in PASSED_THROUGH:
        if options.get(name) is not None:
            kwargs[name] = options[name]
    kwargs.update(options.get("engine_args") or {})
    return kwargs


def default_max_num_seqs(world_size: int) -> int | None:
    """vLLM's own ``max_num_seqs`` default on this device for its OpenAI server (what ``vllm serve`` batches), for
    an engine of ``world_size`` workers; None when this vLLM cannot say (then vLLM's ``LLM`` picks its own)."""
    try:
        from vllm.engine.arg_utils import EngineArgs
        from vllm.usage.usage_lib import UsageContext
    except ImportError:
        return None
    ask = getattr(EngineArgs, "get_batch_defaults", None)
    if ask is None:
        return None
    try:
        _tokens, seqs = ask(world_size)
    except TypeError:  # versions that take no world size
        _tokens, seqs = ask()
    value = seqs.get(UsageContext.OPENAI_API_SERVER)
    return int(value) if value else None


def with_default_max_num_seqs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``vllm.LLM``'s arguments with ``max_num_seqs`` as ``vllm serve`` defaults it when none is given."""
    if kwargs.get("max_num_seqs") is not None:
        return kwargs
    world = int(kwargs.get("tensor_parallel_size") or 1) * int(kwargs.get("pipeline_parallel_size") or 1)
    seqs = default_max_num_seqs(world)
    return {**kwargs, "max_num_seqs": seqs} if seqs else kwargs


def cpu_threads(engines_on_host: int) -> int:
    """torch threads for a CPU engine: the cores, less one for the supervisor and web app, shared
    between the engines of the host (measured here: 2 threads on 2 cores made throughput collapse as
    soon as anything else ran; 1 thread matched bare ``vllm serve``, which also reserves a core)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, (cores - 1) // max(1, engines_on_host))
