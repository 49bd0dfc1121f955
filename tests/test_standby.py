"""Warm standby engines on a real local cluster (sim backend): promotion on a SIGKILL, a standby's death, recycling."""

from __future__ import annotations

import os
import signal

import pytest

from llmsup.supervisor.core.engine_state import EngineState
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from support.waiting import eventually_async as until

S = JobStatus
pytestmark = [pytest.mark.real, pytest.mark.timeout(90)]


def standbys(sup: Supervisor) -> list[int]:
    return [e.pid for e in sup.pool if e.state is EngineState.STANDBY]


async def ready_with_standby(sup: Supervisor) -> tuple[int, int]:
    await until(lambda: len(standbys(sup)) == 1, 30)
    (serving,) = [e.pid for e in sup.pool.serving()]
    return serving, standbys(sup)[0]


@pytest.mark.settings(engines=1, standby=1)
async def test_c_level_hang_is_recovered_by_promoting_the_standby(sup: Supervisor) -> None:
    serving_pid, standby_pid = await ready_with_standby(sup)
    hang = sup.submit(JobRequest("stuck in C [sim:hang-nosigint]", deadline_s=0.5)).job
    nxt = sup.submit(JobRequest("next", max_tokens=3)).job
    assert (await sup.wait(hang.id, 20)).status is S.TIMED_OUT
    done = await sup.wait(nxt.id, 20)
    assert done.status is S.SUCCEEDED and done.engine is not None and done.engine.pid == standby_pid
    await until(lambda: len(standbys(sup)) == 1, 30)  # a new standby, in the killed engine's place
    assert standbys(sup)[0] not in (serving_pid, standby_pid)
    assert sup.metrics.standby_promotions._value.get() == 1


@pytest.mark.settings(engines=1, standby=1)
async def test_a_standby_that_dies_is_replaced(sup: Supervisor) -> None:
    serving_pid, standby_pid = await ready_with_standby(sup)
    os.kill(standby_pid, signal.SIGKILL)
    await until(lambda: standbys(sup) and standbys(sup)[0] != standby_pid, 40)
    assert [e.pid for e in sup.pool.serving()] == [serving_pid]  # the serving engine was not touched


@pytest.mark.settings(engines=1, standby=1, max_jobs_per_engine=1)
async def test_recycling_is_done_by_promotion(sup: Supervisor) -> None:
    serving_pid, standby_pid = await ready_with_standby(sup)
    first = await sup.wait(sup.submit(JobRequest("one", max_tokens=2)).job.id, 20)
    second = await sup.wait(sup.submit(JobRequest("two", max_tokens=2)).job.id, 20)
    assert first.engine is not None and first.engine.pid == serving_pid
    assert second.engine is not None and second.engine.pid == standby_pid  # no load waited for
    await until(lambda: len(standbys(sup)) == 1 and standbys(sup)[0] != standby_pid, 40)
