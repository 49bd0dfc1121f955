"""An engine's GPU memory report: its own processes' share of the GPU process table, cached, None on a CPU.

The sources (NVML, nvidia-smi, torch) are replaced by tables given here; the real ones are only asked to answer
without raising on this machine (which has no GPU).
"""

from __future__ import annotations

import os

import pytest

from llmsup.engines import gpu_memory
from llmsup.engines.gpu_memory import MIB, GpuMemory, attribute

pytestmark = pytest.mark.timeout(10)
ME, CHILD, OTHER, ELSEWHERE = 100, 101, 200, 999_999


def visible(pid: int) -> bool:
    return pid != ELSEWHERE


def test_only_this_engines_processes_count() -> None:
    table = [(ME, 512 * MIB), (CHILD, 1024 * MIB), (OTHER, 4096 * MIB)]
    assert attribute(table, {ME, CHILD}, visible) == 1536.0
    assert attribute([], {ME}, visible) == 0.0  # on a GPU, holding nothing yet


def test_a_table_of_another_pid_namespace_says_nothing() -> None:
    assert attribute([(ELSEWHERE, 512 * MIB)], {ME}, visible) is None


def test_sources_in_order_then_the_fallback() -> None:
    asked: list[str] = []

    def nvml() -> list[tuple[int, int]] | None:
        asked.append("nvml")
        return None  # not installed

    def smi() -> list[tuple[int, int]] | None:
        asked.append("smi")
        return [(ELSEWHERE, MIB)]  # a container's view: pids of another namespace

    probe = GpuMemory([nvml, smi], fallback=lambda: 300.0, pids=lambda: {ME}, pid_exists=visible)
    assert probe.read_mb("0") == 300.0
    assert asked == ["nvml", "smi"]


def test_cpu_engines_report_none_and_reads_are_cached() -> None:
    now = [0.0]
    reads: list[int] = []

    def nvml() -> list[tuple[int, int]]:
        reads.append(1)
        return [(ME, (1000 + 10 * len(reads)) * MIB)]

    probe = GpuMemory([nvml], fallback=lambda: None, min_interval_s=5.0, clock=lambda: now[0], pids=lambda: {ME},
                      pid_exists=visible)
    assert probe.read_mb("") is None and probe.read_mb("-1") is None and reads == []
    assert probe.read_mb("0,1") == 1010.0
    now[0] = 4.9
    assert probe.read_mb("0,1") == 1010.0 and len(reads) == 1
    assert probe.read_mb("0,1", fresh=True) == 1020.0
    now[0] = 10.0
    assert probe.read_mb("0,1") == 1030.0


def test_the_real_sources_answer_without_raising_here() -> None:
    for table in (gpu_memory.nvml_table(), gpu_memory.nvidia_smi_table()):
        assert table is None or all(isinstance(pid, int) for pid, _ in table)
    assert gpu_memory.torch_allocated_mb() is None or gpu_memory.torch_allocated_mb() >= 0
    assert os.getpid() in gpu_memory.own_pids()
    assert gpu_memory.gpu_memory_mb("") is None
