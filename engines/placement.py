"""GPU placement: which devices an engine pins, from its host-local rank.

An engine must set ``CUDA_VISIBLE_DEVICES`` before torch or vLLM is imported.
N engines on a host with G GPUs are spread evenly; an engine may take several
GPUs (tensor parallelism) with ``gpus_per_engine``.
"""

from __future__ import annotations

import os
import subprocess


def detect_gpu_count() -> int:
    """Number of NVIDIA GPUs visible on this host, without importing CUDA libraries."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def devices_for_rank(local_rank: int, gpu_count: int, gpus_per_engine: int = 1) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value for the engine with this host-local rank.

    Returns "" on a host without GPUs (the engine runs on the CPU). Engines are
    given consecutive groups of ``gpus_per_engine`` devices, round robin when
    there are more engines than groups (engines then share a group).
    """
    if local_rank < 0 or gpus_per_engine < 1:
        raise ValueError("local_rank must be >= 0 and gpus_per_engine >= 1")
    if gpu_count <= 0:
        return ""
    if gpus_per_engine > gpu_count:
        raise ValueError(f"gpus_per_engine={gpus_per_engine} but only {gpu_count} GPUs on this host")
    groups = gpu_count // gpus_per_engine
    first = (local_rank % groups) * gpus_per_engine
    return ",".join(str(d) for d in range(first, first + gpus_per_engine))


def plan(engines: int, gpu_count: int, gpus_per_engine: int = 1) -> list[str]:
    """Devices for each of ``engines`` engines on one host."""
    return [devices_for_rank(rank, gpu_count, gpus_per_engine) for rank in range(engines)]
