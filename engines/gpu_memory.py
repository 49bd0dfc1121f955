"""GPU memory held by this engine: its own process and the processes it started (vLLM's EngineCore, workers).

Read per process from NVML (``pynvml``, which vLLM's GPU builds install), else from ``nvidia-smi``, else from
torch's allocator when CUDA is already initialised in this process (never initialised here: that alone would
take GPU memory). A process table whose pids this process cannot see (a container's own pid namespace) says
nothing about this engine, and the next source is asked. None on a CPU engine or when no source answers.
A read is cached for ``min_interval_s`` (NVML answers in about a millisecond, nvidia-smi in tens).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence

MIB = 1024 * 1024
ProcessTable = list[tuple[int, int]]  # (pid, bytes of GPU memory)
Source = Callable[[], "ProcessTable | None"]
_nvml_ready = False


def own_pids() -> set[int]:
    """This process and every process below it."""
    pids = {os.getpid()}
    try:
        import psutil
    except ImportError:
        return pids
    try:
        pids.update(child.pid for child in psutil.Process().children(recursive=True))
    except psutil.Error:  # a child gone meanwhile: this process alone
        pass
    return pids


def nvml_table() -> ProcessTable | None:
    try:
        import pynvml
    except ImportError:
        return None
    global _nvml_ready
    try:
        if not _nvml_ready:
            pynvml.nvmlInit()
            _nvml_ready = True
        table: ProcessTable = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                table.append((int(proc.pid), int(proc.usedGpuMemory or 0)))
        return table
    except pynvml.NVMLError:
        return None


def nvidia_smi_table() -> ProcessTable | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    table: ProcessTable = []
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        try:
            table.append((int(pid), int(float(used)) * MIB))  # MiB
        except ValueError:
            continue  # "[N/A]" where the driver does not say
    return table


def torch_allocated_mb() -> float | None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    reserved: int = sum(torch.cuda.memory_reserved(i) for i in range(torch.cuda.device_count()))  # bytes (torch: untyped)
    return reserved / MIB


def attribute(table: ProcessTable, pids: set[int], pid_exists: Callable[[int], bool]) -> float | None:
    """MiB held by ``pids``; None when the table names processes this process cannot see (another pid space)."""
    if any(pid not in pids and not pid_exists(pid) for pid, _ in table):
        return None
    return sum(used for pid, used in table if pid in pids) / MIB


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class GpuMemory:
    def __init__(self, sources: Sequence[Source] = (nvml_table, nvidia_smi_table),
                 fallback: Callable[[], float | None] = torch_allocated_mb, min_interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, pids: Callable[[], Iterable[int]] = own_pids,
                 pid_exists: Callable[[int], bool] = _pid_exists) -> None:
        self.sources = list(sources)
        self.fallback = fallback
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.pids = pids
        self.pid_exists = pid_exists
        self._cached: tuple[float, float | None] | None = None  # (when, MiB)

    def read_mb(self, gpu: str, fresh: bool = False) -> float | None:
        """MiB of GPU memory this engine holds; None for a CPU engine (``gpu`` empty) or when nothing can say.
        ``fresh``: measure now, whatever the cache holds."""
        if not [d for d in gpu.split(",") if d.strip() and d.strip() != "-1"]:
            return None
        now = self.clock()
        if not fresh and self._cached is not None and now - self._cached[0] < self.min_interval_s:
            return self._cached[1]
        value = self._measure()
        self._cached = (now, None if value is None else round(value, 1))
        return self._cached[1]

    def _measure(self) -> float | None:
        pids = set(self.pids())
        for source in self.sources:
            table = source()
            if table is not None:
                held = attribute(table, pids, self.pid_exists)
                if held is not None:
                    return held
        return self.fallback()


PROBE = GpuMemory()


def gpu_memory_mb(gpu: str, fresh: bool = False) -> float | None:
    """This engine's GPU memory in MiB (None on a CPU engine): the engine reports it beside its RSS."""
    return PROBE.read_mb(gpu, fresh)
