"""A short chaos run in CI: a job mix while an engine, the supervisor and the controller are SIGKILLed."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import Chaos, Plan

pytestmark = pytest.mark.real  # real processes (see tests/conftest.py)


@pytest.mark.timeout(900)
def test_nothing_lost_nothing_twice_no_orphans(tmp_path: Path) -> None:
    plan = Plan(jobs=150, engines=4, standby=1, engine_kill_every_s=(2.0, 4.0), max_engine_kills=3,
                supervisor_kills_at=(0.35,), controller_kills_at=(0.7,), finish_timeout_s=300)
    report = Chaos(tmp_path, plan).run()
    assert report.supervisor_kills == 1 and report.controller_kills == 1 and report.engine_kills >= 1, report
    assert not report.lost and not report.not_ended, report
    assert not report.without_reason, report
    assert not report.unexpected, report
    assert not report.not_recovered, report  # back to 4 serving engines after every kill
    assert not report.leftovers, report
    assert sum(report.outcomes.values()) == plan.jobs
