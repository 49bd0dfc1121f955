"""Shared fixtures: a real local IPyParallel cluster driven by a real Supervisor."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def make_settings(run_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        run_dir=run_dir, engines=2, backend="sim", heartbeat_ms=200, interrupt_grace_s=0.3, kill_grace_s=1.5,
        retry_backoff_s=0.05, deadline_s=30, sim_token_s=0.002,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
async def sup(run_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[Supervisor]:
    marker = request.node.get_closest_marker("settings")
    overrides = marker.kwargs if marker else {}
    supervisor = Supervisor(make_settings(run_dir, **overrides))
    try:
        await supervisor.start()
        yield supervisor
    finally:
        await supervisor.stop()
