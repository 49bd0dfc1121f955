"""The GPUs a server may use are CUDA_VISIBLE_DEVICES as given (indices or UUIDs; "" and -1: none): engines go on
those devices only, pools split them. This host has no GPU: a stand-in ``nvidia-smi`` on PATH lists four."""

from __future__ import annotations

import os
import pathlib

import pytest

from llmsup.engines.placement import parse_visible, plan, visible_gpus

FOUR_GPUS = "".join(f"echo 'GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i}aaa)'\n" for i in range(4))


@pytest.fixture
def smi(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A stand-in nvidia-smi (first on PATH) with four GPUs for ``-L`` and no process for other queries."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text(f'#!/bin/sh\nif [ "$1" = "-L" ]; then\n{FOUR_GPUS}fi\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return script


@pytest.mark.parametrize(("value", "devices"), [
    ("2,3", ["2", "3"]),
    (" 3 , 1 ", ["3", "1"]),  # CUDA's order, not sorted
    ("GPU-5aaa,GPU-7bbb", ["GPU-5aaa", "GPU-7bbb"]),
    ("MIG-1234", ["MIG-1234"]),
    ("", []),
    ("-1", []),
    ("1,-1,2", ["1"]),  # CUDA stops at the first negative index
    ("2,2", ["2"]),
])
def test_cuda_visible_devices_as_given(value: str, devices: list[str]) -> None:
    assert parse_visible(value) == devices


def test_the_visible_set_wins_over_what_nvidia_smi_lists(smi: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == ["0", "1", "2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    assert plan(2, visible_gpus()) == ["2", "3"]
    assert plan(3, visible_gpus()) == ["2", "3", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-2aaa,GPU-3aaa")
    assert plan(1, visible_gpus(), gpus_per_engine=2) == ["GPU-2aaa,GPU-3aaa"]
    for none in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", none)
        assert visible_gpus() == [] and plan(2, visible_gpus()) == ["", ""]


def _launched(tmp_path: pathlib.Path, gpus: list[str], **settings: object) -> list[tuple[str, str]]:
    """(pool, devices) of each engine the core launches over these visible devices."""
    from conftest import make_settings
    from fakes import FakeClock, FakeDriver
    from llmsup.supervisor.core.owner import SupervisorCore
    from llmsup.supervisor.store import MemoryStore

    clock, driver = FakeClock(), FakeDriver()
    core = SupervisorCore(make_settings(tmp_path, **settings), MemoryStore(), driver)
    core.configure_engines({"backend": "sim"}, gpus)
    core.start_engines(core.settings.engines, clock.now)
    return [(core.pool.launches[set_id].pool, gpu) for _, set_id, gpu in driver.verbs("launch")]


def test_the_core_places_engines_on_the_visible_devices(tmp_path: pathlib.Path) -> None:
    assert _launched(tmp_path, ["2", "3"], engines=2, standby=0) == [("default", "2"), ("default", "3")]
    assert _launched(tmp_path, ["2", "3"], engines=1, standby=1) == [("default", "2"), ("default", "3")]
    assert _launched(tmp_path, ["GPU-a", "GPU-b", "GPU-c", "GPU-d"], engines=2, gpus_per_engine=2, standby=0) == [
        ("default", "GPU-a,GPU-b"), ("default", "GPU-c,GPU-d")]


def test_each_pool_gets_its_own_slice_of_the_visible_devices(tmp_path: pathlib.Path) -> None:
    pools = [{"name": "small", "engines": 1}, {"name": "big", "engines": 1, "gpus_per_engine": 2}]
    launched = _launched(tmp_path, ["1", "3", "5", "7"], pools=pools, standby=0)
    assert launched == [("small", "1"), ("big", "3,5")]
    with pytest.raises(ValueError, match="ask for 3 GPUs"):
        _launched(tmp_path, ["1", "3"], pools=pools, standby=0)


@pytest.mark.real
@pytest.mark.timeout(120)
async def test_engines_start_on_the_gpus_cuda_visible_devices_names(
        smi: pathlib.Path, run_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real cluster: each engine process reports the CUDA_VISIBLE_DEVICES it was started with."""
    from conftest import make_settings
    from llmsup.supervisor.service import Supervisor

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    supervisor = Supervisor(make_settings(run_dir, engines=2, standby=0))
    try:
        await supervisor.start()
        assert sorted(view["gpu"] for view in supervisor.engine_views()) == ["2", "3"]
    finally:
        await supervisor.stop()
