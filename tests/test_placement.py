"""GPU placement: what CUDA_VISIBLE_DEVICES each engine would set (no GPU needed)."""

from __future__ import annotations

import pathlib

import pytest

from llmsup.engines.placement import detect_gpu_count, devices_for_rank, plan


def test_no_gpu_means_cpu_for_every_engine() -> None:
    assert plan(3, 0) == ["", "", ""]


def test_one_engine_per_gpu() -> None:
    assert plan(4, 4) == ["0", "1", "2", "3"]


def test_fewer_engines_than_gpus_take_the_first_ones() -> None:
    assert plan(2, 8) == ["0", "1"]


def test_more_engines_than_gpus_share_round_robin_evenly() -> None:
    devices = plan(5, 2)
    assert devices == ["0", "1", "0", "1", "0"]
    assert abs(devices.count("0") - devices.count("1")) <= 1


def test_tensor_parallel_groups_are_consecutive_and_disjoint() -> None:
    assert plan(4, 8, gpus_per_engine=2) == ["0,1", "2,3", "4,5", "6,7"]
    assert plan(2, 8, gpus_per_engine=4) == ["0,1,2,3", "4,5,6,7"]


def test_tensor_parallel_with_more_engines_than_groups_round_robin() -> None:
    assert plan(3, 4, gpus_per_engine=2) == ["0,1", "2,3", "0,1"]


def test_leftover_gpus_are_not_used_by_partial_groups() -> None:
    assert plan(2, 5, gpus_per_engine=2) == ["0,1", "2,3"]  # GPU 4 cannot form a group of 2


def test_invalid_requests_are_rejected() -> None:
    with pytest.raises(ValueError):
        devices_for_rank(0, 2, gpus_per_engine=3)
    with pytest.raises(ValueError):
        devices_for_rank(-1, 2)
    with pytest.raises(ValueError):
        devices_for_rank(0, 2, gpus_per_engine=0)


def test_detect_reads_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,3")
    assert detect_gpu_count() == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpu_count() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert detect_gpu_count() == 0


def test_detect_without_nvidia_smi_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert detect_gpu_count() == 0


def test_detect_counts_nvidia_smi_lines(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """A stand-in nvidia-smi on PATH (this host has no GPU) prints what the real one prints for -L."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-b)'\n"
    )
    smi.chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpu_count() == 2
    assert plan(3, detect_gpu_count()) == ["0", "1", "0"]
