"""Joining a cluster the supervisor did not start, and signalling through Client.send_signal."""

from __future__ import annotations

from pathlib import Path

import ipyparallel as ipp
import pytest

from conftest import make_settings
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor

pytestmark = [pytest.mark.real, pytest.mark.timeout(90)]


async def test_join_existing_cluster_and_interrupt_through_send_signal(tmp_path: Path) -> None:
    external = ipp.Cluster(
        n=2, cluster_id="external", profile_dir=str(tmp_path / "profile_external"), controller_ip="127.0.0.1",
        controller_args=["--HeartMonitor.period=200"], shutdown_atexit=False,
    )
    await external.start_controller()
    await external.start_engines(2)
    sup = Supervisor(make_settings(tmp_path / "run", engines=0, cluster_file=Path(external.cluster_file),
                                   signal_path="ipp"))
    try:
        await sup.start(wait_for_engines=False)
        await sup.wait_for_engines(2, 60)
        assert not sup.cluster.local and all(e.set_id == "" for e in sup.pool)
        job = sup.submit(JobRequest("remote style [sim:hang]", deadline_s=1)).job
        nxt = sup.submit(JobRequest("after", max_tokens=3)).job
        job = await sup.wait(job.id, 20)
        assert job.status is JobStatus.TIMED_OUT and job.output.startswith("remote style")
        assert "interrupted" in job.error
        assert (await sup.wait(nxt.id, 20)).status is JobStatus.SUCCEEDED
        assert sup.metrics.interrupts.labels("sigkill")._value.get() == 0
    finally:
        await sup.stop()
        # the supervisor must not have stopped a cluster it only joined
        client = await external.connect_client()
        assert len(client.ids) == 2
        client.close()
        await external.stop_cluster()
