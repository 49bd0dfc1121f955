"""A supervisor core before its shell has started the cluster: it has no driver yet, launches nothing, and answers
what it can (jobs queue; views are empty)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_settings
from llmsup.supervisor.core.driver import NotStarted
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.now import Now
from llmsup.supervisor.core.owner import SupervisorCore
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.store import MemoryStore

pytestmark = pytest.mark.timeout(10)


def test_a_core_without_a_driver_launches_nothing_and_queues_jobs(tmp_path: Path) -> None:
    core = SupervisorCore(make_settings(tmp_path, engines=2), MemoryStore())
    assert isinstance(core.driver, NotStarted)
    core.configure_engines({"backend": "sim"})
    now = Now(mono=100.0, wall=1_000_000.0)
    core.start_engines(2, now)
    core.reconcile(now)
    assert core.standby_target == 0 and not core.pool.launches and not core.ready()
    assert core.expected_engines() == 0 and core.host_views(now) == [] and core.engine_views(now) == []
    job = core.submit(JobRequest(prompt="hello"), now).job
    assert core.dispatch_ready(now) == 0
    assert core.get(job.id).status is JobStatus.QUEUED


def test_requests_to_engines_before_the_start_are_refused() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        NotStarted().launch("")
