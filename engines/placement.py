"""GPU placement: which devices an engine pins, from its host-local rank, and how much of their memory it takes.

An engine must set ``CUDA_VISIBLE_DEVICES`` before torch or vLLM is imported.
N engines on a host with G GPUs are spread evenly; an engine may take several
GPUs (tensor parallelism) with ``gpus_per_engine``. With no engine count given,
a GPU host runs one engine per group of ``gpus_per_engine`` GPUs; engines that
must share a GPU split ``gpu_memory_utilization`` between them.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
from collections import Counter

DEFAULT_ENGINES_WITHOUT_GPU = 2
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's own default, for the engines of one GPU together


def detect_gpu_count() -> int:
    """Number of NVIDIA GPUs visible on this host, without importing CUDA libraries."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return _nvidia_smi_gpus(os.environ.get("PATH", ""))


@functools.lru_cache(maxsize=4)
def _nvidia_smi_gpus(search_path: str) -> int:
    """``nvidia-smi -L``'s GPU lines (asked once per PATH: settings ask each time they are built)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def default_engines(gpu_count: int, gpus_per_engine: int = 1) -> int:
    """Engines when none are asked: one per group of ``gpus_per_engine`` GPUs (at least one), else 2 on the CPU."""
    if gpu_count <= 0:
        return DEFAULT_ENGINES_WITHOUT_GPU
    return max(1, gpu_count // max(1, gpus_per_engine))


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


def engines_per_gpu(devices: list[str]) -> Counter[str]:
    """How many engines of a plan hold each GPU."""
    return Counter(gpu for group in devices if group for gpu in group.split(","))


def memory_shares(devices: list[str], utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION) -> dict[str, float]:
    """The fraction of GPU memory each device group of a plan may take: ``utilization`` split evenly between
    the engines that share a GPU (the most shared GPU of a group decides), rounded down. CPU engines: none."""
    crowd = engines_per_gpu(devices)
    return {group: math.floor(utilization / max(crowd[gpu] for gpu in group.split(",")) * 1000) / 1000
            for group in set(devices) if group}


def describe(devices: list[str], serving: int, shares: dict[str, float]) -> list[str]:
    """One line per engine of a plan for the start log: its devices, its memory share (where ``shares`` has
    one: vLLM), and how many engines share its GPUs."""
    crowd = engines_per_gpu(devices)
    lines = []
    for rank, group in enumerate(devices):
        role = " (standby)" if rank >= serving else ""
        if not group:
            lines.append(f"engine {rank + 1} of {len(devices)}{role} on the CPU")
            continue
        gpus = group.split(",")
        shared = max(crowd[gpu] for gpu in gpus)
        where = f"GPU{'s' if len(gpus) > 1 else ''} {group}"
        notes = [f"gpu_memory_utilization {shares[group]}"] if group in shares else []
        notes += [f"shared by {shared} engines"] if shared > 1 else []
        lines.append(f"engine {rank + 1} of {len(devices)}{role} on {where}" + (f" ({', '.join(notes)})" if notes else ""))
    return lines
