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


# defaults on a GPU host, memory shares, the start log ------------------------------------------------------------------
def test_default_engine_count_is_one_per_gpu_group() -> None:
    from llmsup.engines.placement import default_engines

    assert default_engines(0) == 2  # CPU: as before
    assert (default_engines(1), default_engines(8), default_engines(8, 2), default_engines(8, 3)) == (1, 8, 4, 2)
    assert default_engines(2, 4) == 1  # too few GPUs for one group: one engine (its placement then says why not)


def test_settings_default_engines_follow_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmsup.supervisor.settings import Settings

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert Settings().engines == 4 and Settings(gpus_per_engine=2).engines == 2
    assert Settings(engines=6).engines == 6  # asked for: kept
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert Settings().engines == 2


def test_engines_sharing_a_gpu_split_its_memory() -> None:
    from llmsup.engines.placement import describe, memory_shares

    assert memory_shares(plan(2, 2)) == {"0": 0.9, "1": 0.9}
    assert memory_shares(plan(3, 2)) == {"0": 0.45, "1": 0.9}
    assert memory_shares(plan(3, 1), 0.8) == {"0": 0.266}  # rounded down: the engines never ask for more than all
    assert memory_shares(plan(3, 4, gpus_per_engine=2)) == {"0,1": 0.45, "2,3": 0.9}
    assert memory_shares(plan(2, 0)) == {}
    devices = plan(3, 2)
    assert describe(devices, 2, memory_shares(devices)) == [
        "engine 1 of 3 on GPU 0 (gpu_memory_utilization 0.45, shared by 2 engines)",
        "engine 2 of 3 on GPU 1 (gpu_memory_utilization 0.9)",
        "engine 3 of 3 (standby) on GPU 0 (gpu_memory_utilization 0.45, shared by 2 engines)",
    ]
    assert describe(["", ""], 2, {}) == ["engine 1 of 2 on the CPU", "engine 2 of 2 on the CPU"]
    assert describe(["0,1"], 1, {}) == ["engine 1 of 1 on GPUs 0,1"]


@pytest.mark.parametrize(("gpus", "engines", "tp", "devices", "shares"), [
    (1, 2, 1, ["0", "0"], [0.45, 0.45]),  # two engines asked on one GPU: each half of vLLM's 0.9
    (4, 4, 1, ["0", "1", "2", "3"], [0.9] * 4),
    (4, 2, 2, ["0,1", "2,3"], [0.9, 0.9]),
    (0, 2, 1, ["", ""], [None, None]),
])
def test_the_core_launches_the_plan_and_gives_each_engine_its_share(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, gpus: int, engines: int, tp: int,
        devices: list[str], shares: list[float | None]) -> None:
    """The GPU count is passed in (no GPU here): the engines launched, their memory share as the engine gets it
    (``options["gpu_memory_utilization"]``), and the start log's map."""
    from conftest import make_settings
    from fakes import FakeClock, FakeDriver
    from llmsup.supervisor.core import reports as ev
    from llmsup.supervisor.core.owner import SupervisorCore
    from llmsup.supervisor.store import MemoryStore

    clock, driver = FakeClock(), FakeDriver()
    core = SupervisorCore(make_settings(tmp_path, engines=engines, gpus_per_engine=tp, standby=0), MemoryStore(),
                          driver)
    caplog.set_level("INFO", logger="llmsup.engines")
    core.configure_engines({"backend": "vllm", "options": {}}, gpus)
    core.start_engines(engines, clock.now)
    launched = driver.verbs("launch")
    assert [gpu for _, _, gpu in launched] == devices
    for engine_id, (_, set_id, gpu) in enumerate(launched):
        core.report(ev.EngineRegistered(engine_id), clock.now)
        core.report(ev.EngineIdentified(engine_id, ev.EngineIdentity("h", "h|b", 100 + engine_id, gpu, set_id)),
                    clock.now)
    loaded = [config["options"].get("gpu_memory_utilization") for _, _, config in driver.verbs("load")]
    assert loaded == shares
    if gpus:
        assert f"engine 1 of {engines} on GPU" in caplog.text and "gpu_memory_utilization" in caplog.text


# slots: vLLM's own max_num_seqs default for the engine's device ---------------------------------------------------------
@pytest.mark.parametrize(("asked", "reported", "slots"), [
    (None, 1024, 1024),  # an H100-class GPU: the engine reports what vLLM chose, the supervisor fills that many
    (None, 128, 128),  # vLLM on CPU
    (16, 1024, 16),  # --max-num-seqs given: it wins
])
def test_a_vllm_engine_takes_the_slots_its_device_gets_from_vllm(
        tmp_path: pathlib.Path, asked: int | None, reported: int, slots: int) -> None:
    from conftest import make_settings
    from fakes import FakeClock, FakeDriver
    from llmsup.supervisor.core import reports as ev
    from llmsup.supervisor.core.owner import SupervisorCore
    from llmsup.supervisor.store import MemoryStore

    clock, driver = FakeClock(), FakeDriver()
    settings = make_settings(tmp_path, engines=1, standby=0, slots_per_engine=asked)
    core = SupervisorCore(settings, MemoryStore(), driver)
    core.configure_engines({"backend": "vllm", "options": {}}, ["0"])
    core.start_engines(1, clock.now)
    (_, set_id, gpu), = driver.verbs("launch")
    core.report(ev.EngineRegistered(0), clock.now)
    core.report(ev.EngineIdentified(0, ev.EngineIdentity("h", "h|b", 100, gpu, set_id)), clock.now)
    core.report(ev.EngineLoaded(0, {"backend": "vllm", "max_num_seqs": reported}), clock.now)
    assert core.find_engine(0).slots == slots


def test_vllm_is_asked_for_its_max_num_seqs_default_as_vllm_serve_gets_it() -> None:
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    from llmsup.engines.vllm_settings import default_max_num_seqs, with_default_max_num_seqs

    expected = EngineArgs.get_batch_defaults(1)[1][UsageContext.OPENAI_API_SERVER]
    assert default_max_num_seqs(1) == expected  # this machine: vLLM's CPU build, 128
    assert with_default_max_num_seqs({"model": "m"})["max_num_seqs"] == expected
    assert with_default_max_num_seqs({"model": "m", "max_num_seqs": 4})["max_num_seqs"] == 4
