"""GPU placement: which devices an engine pins, from its host-local rank, and how much of their memory it takes.

An engine must set ``CUDA_VISIBLE_DEVICES`` before torch or vLLM is imported. The devices a server may use are the
ones its own ``CUDA_VISIBLE_DEVICES`` names, as given (indices, ``GPU-<uuid>`` or ``MIG-<uuid>``; "" or -1: none),
else every GPU ``nvidia-smi -L`` lists: on a shared box ``CUDA_VISIBLE_DEVICES=2,3`` puts the engines on GPUs 2 and
3, never on 0 and 1. Plans are made over positions in that list (0 .. n-1) and named at the end (:func:`name_group`).
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
from collections.abc import Sequence

DEFAULT_ENGINES_WITHOUT_GPU = 2
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's own default, for the engines of one GPU together


def visible_gpus() -> list[str]:
    """The GPUs this host lets us use, as ``CUDA_VISIBLE_DEVICES`` names them, without importing CUDA libraries."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return parse_visible(visible)
    return list(_nvidia_smi_gpus(os.environ.get("PATH", "")))


def parse_visible(text: str) -> list[str]:
    """A ``CUDA_VISIBLE_DEVICES`` value's devices, as CUDA reads it: in order, up to a negative index (-1: none)."""
    names: list[str] = []
    for entry in (part.strip() for part in text.split(",")):
        if entry.startswith("-"):
            break
        if entry and entry not in names:
            names.append(entry)
    return names


def detect_gpu_count() -> int:
    """Number of GPUs this host lets us use (:func:`visible_gpus`)."""
    return len(visible_gpus())


@functools.lru_cache(maxsize=4)
def _nvidia_smi_gpus(search_path: str) -> tuple[str, ...]:
    """The indices of ``nvidia-smi -L``'s GPU lines (asked once per PATH: settings ask each time they are built)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.split(":", 1)[0].removeprefix("GPU ").strip() for line in out.stdout.splitlines()
                 if line.startswith("GPU "))


def device_names(gpus: int | Sequence[str]) -> list[str]:
    """The devices of a plan: names as given, or a count meaning devices 0 .. n-1."""
    return [str(i) for i in range(gpus)] if isinstance(gpus, int) else list(gpus)


def name_group(group: str, names: Sequence[str]) -> str:
    """A device group planned over positions (``"0,1"``) as ``CUDA_VISIBLE_DEVICES`` names its devices."""
    return ",".join(names[int(i)] for i in group.split(",")) if group else ""


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


def plan(engines: int, gpus: int | Sequence[str], gpus_per_engine: int = 1) -> list[str]:
    """Devices for each of ``engines`` engines on one host, of ``gpus`` (the visible devices, or their count)."""
    names = device_names(gpus)
    return [name_group(devices_for_rank(rank, len(names), gpus_per_engine), names) for rank in range(engines)]


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
