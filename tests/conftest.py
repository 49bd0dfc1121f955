"""Shared fixtures: a real Supervisor on a real local IPyParallel cluster (``sup``); the server the HTTP tests share
(``server``: in-process unless a test asks for the real ``llmsup serve`` with ``indirect`` parameter ``"real"``), one
of each kind for the session (``inprocess_server``, ``real_server``), and the web app in-process without engines
(``web``).

Tests that need real processes (a cluster, vLLM or transformers, hosts, Chromium, notebooks, ``llmsup serve``) are
marked ``real``: by their module's ``pytestmark``, or here, for every test that uses ``sup`` or ``real_server`` or
runs on the real server. ``make test-fast`` leaves them out (``-m "not real"``); ``make test`` runs everything."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings
from support.inprocess import InProcessApp, in_process
from support.inprocess_server import InProcessServer, serving_in_process
from support.live import LiveServer, serving

REAL_FIXTURES = {"sup", "real_server", "tiny_model", "models_run_dir"}  # a cluster, llmsup serve, transformers

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


REAL_MODULE = re.compile(r"^pytestmark = .*pytest\.mark\.real\b", re.M)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With ``-m "not real"``, modules marked real as a whole are not even imported (vLLM, transformers, Chromium's
    driver, notebooks: importing them costs more than the fast tests themselves)."""
    if config.option.markexpr.replace(" ", "") != "notreal" or collection_path.suffix != ".py" \
            or not collection_path.name.startswith("test_"):
        return None
    return True if REAL_MODULE.search(collection_path.read_text()) else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if REAL_FIXTURES & set(getattr(item, "fixturenames", ())) or params.get("server") == "real" \
                or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.real)


@pytest.fixture(scope="session")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live ``llmsup serve`` (sim backend, 2 engines, the test settings) shared by every test that needs one with
    these settings (tests leave no job running and give back what they drain or restart); teardown fails if any
    process it started survives. A module that needs other settings defines its own (``support.live.serving``)."""
    with serving(tmp_path_factory.mktemp("llmsup")) as live:
        yield live


@pytest.fixture(scope="session")
def inprocess_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    """The same server in-process (``support.inprocess_server``): the same settings, no processes."""
    with serving_in_process(tmp_path_factory.mktemp("llmsup-inprocess")) as live:
        yield live


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> LiveServer | InProcessServer:
    """The shared server: in-process, or the real ``llmsup serve`` for a test parametrized (``indirect``) with
    ``"real"``. ``@pytest.mark.parametrize("server", ["inprocess", "real"], indirect=True)`` runs one contract on
    both."""
    kind = getattr(request, "param", "inprocess")
    assert kind in ("inprocess", "real"), kind
    live: LiveServer | InProcessServer = request.getfixturevalue("real_server" if kind == "real" else "inprocess_server")
    return live


@pytest.fixture
async def web(run_dir: Path) -> AsyncIterator[InProcessApp]:
    """The web app in-process on default settings (sim backend), with a never-started supervisor."""
    async with in_process(run_dir) as app:
        yield app
