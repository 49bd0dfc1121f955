"""The IPyParallel controller SIGKILLed under a running supervisor: a new one, every engine anew, nothing lost."""

from __future__ import annotations

import os
import signal

import pytest

from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from support.waiting import eventually_async as until

S = JobStatus
pytestmark = [pytest.mark.real, pytest.mark.timeout(120)]


@pytest.mark.settings(engines=2, engine_relaunch_s=1.0)
async def test_controller_killed_mid_job(sup: Supervisor) -> None:
    old_pids = {e.pid for e in sup.pool}
    slow = sup.submit(JobRequest("slow [sim:slow=0.05]", max_tokens=100)).job
    await until(lambda: sup.get(slow.id).tokens >= 2)
    controller = sup.cluster.cluster.controller.pid  # type: ignore[union-attr]
    os.kill(controller, signal.SIGKILL)
    done = await sup.wait(slow.id, 90)
    assert done.status is S.SUCCEEDED and done.attempts == 1  # re-run, not charged
    await until(lambda: len(sup.pool.serving()) == 2, 60)
    assert not old_pids & {e.pid for e in sup.pool}
    with pytest.raises(ProcessLookupError):
        os.killpg(controller, 0)  # its scheduler processes went with it
    after = await sup.wait(sup.submit(JobRequest("after", max_tokens=2)).job.id, 30)
    assert after.status is S.SUCCEEDED
    assert sup.metrics.engine_restarts.labels("controller_lost")._value.get() == 2
