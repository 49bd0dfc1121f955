"""Real supervisors on real local IPyParallel clusters, shared by the tests of a module that ask for the same settings.

Starting one (a controller and its engine processes) takes seconds, and most tests leave it as they found it.
``SharedSupervisors`` keeps the one started last (one at a time: a test that asks for other settings stops it) and
hands it to the next test with the same settings once it is back in a fresh one's state: every job ended and pruned
from the store, the engines it should have serving and idle (its standbys warm), no host added, its counters and
histograms at zero. One that does not get there within ``SETTLE_S`` (a test drained an engine, stopped the supervisor,
left a job running) is stopped, and the next test gets a new one. What a test asserts stays its own: it sees a
supervisor as a fresh one shows itself, except for process ids and engine ids, which a test reads from the pool.

Tests share it on the module's event loop (``asyncio_default_test_loop_scope = "module"`` in pyproject.toml); the
``sup`` fixture (tests/conftest.py) asks in the order ``tests/conftest.py`` puts a module's tests in: grouped by
settings, so that each group starts one supervisor.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Histogram

from llmsup.supervisor.core.engine_state import EngineState
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings

from .waiting import eventually_async

SETTLE_S = 15.0  # a replacement engine (sim backend) serves within a few seconds; a test that waited for it saw it


def settings_key(overrides: Mapping[str, object]) -> str:
    """The same string for the same settings overrides (values need not be hashable)."""
    return repr(sorted(overrides.items()))


@dataclass
class _Held:
    key: str
    supervisor: Supervisor
    hosts: frozenset[str]


class SharedSupervisors:
    """The supervisor the tests of one module share, started under ``base`` with ``make(run_dir, **overrides)``."""

    def __init__(self, base: Path, make: Callable[..., Settings]) -> None:
        self.base = base
        self.make = make
        self.started = 0  # how many this module started (the tests of the sharing itself read it)
        self._held: _Held | None = None
        self._names = itertools.count()

    async def take(self, overrides: Mapping[str, object]) -> Supervisor:
        key = settings_key(overrides)
        if self._held is not None and self._held.key == key:
            return self._held.supervisor
        await self.close()
        supervisor = Supervisor(self.make(self.base / f"sup-{next(self._names)}" / "run", **overrides))
        await supervisor.start()  # a failed start stops what it started
        self.started += 1
        self._held = _Held(key, supervisor, frozenset(supervisor.hosts))
        return supervisor

    async def give_back(self, supervisor: Supervisor) -> None:
        """After a test: reset it for the next one, or stop it when it cannot be."""
        held = self._held
        if held is None or held.supervisor is not supervisor:
            await supervisor.stop()
            return
        try:
            await eventually_async(lambda: self._settled(held), SETTLE_S, "the shared supervisor to settle")
        except AssertionError:
            await self.close()
            return
        _forget_jobs(supervisor)
        _zero_counters(supervisor)

    async def close(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            await held.supervisor.stop()

    @staticmethod
    def _settled(held: _Held) -> bool:
        sup = held.supervisor
        if not sup.started or sup.stopping or frozenset(sup.hosts) != held.hosts:
            raise AssertionError("not reusable")  # no wait helps: stopped, or hosts came or went
        if sup.store.count(JobStatus.QUEUED) or sup.store.count(JobStatus.RUNNING):
            return False
        states = [engine.state for engine in sup.pool]
        serving = states.count(EngineState.IDLE)
        standby = states.count(EngineState.STANDBY)
        return serving + standby == len(states) and serving == sup.expected_engines() \
            and standby == sup.core.engine_side.standby_target


def _forget_jobs(supervisor: Supervisor) -> None:
    """Every job has ended: prune them all, as a fresh store has none (idempotency keys go with them)."""
    while supervisor.store.prune(None, keep=0):
        pass


def _zero_counters(supervisor: Supervisor) -> None:
    """Counters and histograms back to a fresh supervisor's zero (gauges show the state: the next update sets them)."""
    for metric in vars(supervisor.metrics).values():
        if isinstance(metric, Counter | Histogram):
            if metric._labelnames:
                metric.clear()
            else:
                metric._metric_init()
