"""Engines on other hosts (namespace hosts): ``llmsup join`` runs them, runaways there are interrupted through
Client.send_signal (the nanny on their host) and their engines reused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostfixtures import host_settings, serving_on, start_agent, until
from llmsup.supervisor.jobs import JobStatus
from llmsup.supervisor.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from nethosts import HostNet, hostnet  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(150)


async def test_join_agent_engines_serve_and_remote_runaways_are_interrupted(hostnet: HostNet,  # noqa: F811
                                                                            tmp_path: Path) -> None:
    host = hostnet.add_host("hosta")
    sup = Supervisor(host_settings(hostnet, tmp_path / "run", engines=1))
    try:
        await sup.start()
        join = sup.settings.run_dir / "join.json"
        assert join.stat().st_mode & 0o777 == 0o600
        agent = start_agent(hostnet, host, sup, engines=2)
        await until(lambda: len(serving_on(sup, "hosta")) == 2, 60, "2 engines of hosta serving")
        remote = [e for e in sup.pool if e.host == "hosta"]
        assert all(not sup.driver.is_local(e) for e in remote)
        hang = sup.submit(JobRequest("remote [sim:hang]", deadline_s=1.0)).job
        await until(lambda: (e := sup.get(hang.id).engine) is not None and e.host == "hosta" or sup.get(hang.id).status
                    is JobStatus.RUNNING and sup.get(hang.id).engine.host != "hosta", 20, "the runaway to start")
        done = await sup.wait(hang.id, 30)
        assert done.status is JobStatus.TIMED_OUT and done.output.startswith("remote"), done
        assert sup.metrics.interrupts.labels("sigkill")._value.get() == 0
        print(agent.output()[-2000:])
    finally:
        await sup.stop()
