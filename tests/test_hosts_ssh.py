"""``--engine-launcher ssh --hosts H``: IPyParallel's own SSH launcher starts the server's engines on a test host
running sshd (configured through IPyParallel's profile, as a user would), a runaway there is interrupted through
the engine's nanny and the engine reused, and an engine killed there is replaced there."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hostfixtures import host_settings, serving_on, until
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from nethosts import HostNet, hostnet, sshd_unavailable, start_sshd  # noqa: F401 (fixture)

pytestmark = [pytest.mark.real, pytest.mark.timeout(240),
              pytest.mark.skipif(bool(sshd_unavailable()), reason=str(sshd_unavailable()))]


async def test_ssh_launcher_starts_and_replaces_engines_on_its_host(hostnet: HostNet,  # noqa: F811
                                                                    tmp_path: Path) -> None:
    host = hostnet.add_host("sshhost")
    access = start_sshd(hostnet, host)
    settings = host_settings(hostnet, tmp_path / "run", engines=2, engine_launcher="ssh",
                             hosts=[f"root@{host.address}"])
    profile = settings.ipython_dir / "profile_llmsup"
    profile.mkdir(parents=True)
    (profile / "ipcluster_config.py").write_text(  # what a user writes for their cluster (docs/deployment.md: SSH)
        f"c.SSHLauncher.ssh_args = {access.options!r}\n"
        f"c.SSHLauncher.scp_args = {access.options!r}\n"
        f"c.SSHLauncher.remote_python = {sys.executable!r}\n")
    sup = Supervisor(settings)
    try:
        await sup.start()
        assert len(serving_on(sup, "sshhost")) == 2 and all(e.set_id for e in sup.pool)
        hang = sup.submit(JobRequest("over ssh [sim:hang]", deadline_s=1.0)).job
        nxt = sup.submit(JobRequest("next", max_tokens=2)).job
        hang, nxt = await sup.wait(hang.id, 30), await sup.wait(nxt.id, 30)
        assert hang.status is JobStatus.TIMED_OUT and "interrupted" in (hang.error or "")
        assert sup.metrics.interrupts.labels("sigkill")._value.get() == 0
        victim = hang.engine.id  # type: ignore[union-attr]
        assert sup.find_engine(victim).restarts == 0 and nxt.status is JobStatus.SUCCEEDED
        sup.restart_engine(victim)  # killed (busy) or recycled: either way a replacement comes on sshhost
        await until(lambda: victim not in sup.pool.engines and len(serving_on(sup, "sshhost")) == 2, 120,
                    "the replacement engine on sshhost")
        assert any(e.restarts == 1 and e.launched_on == f"root@{host.address}" for e in sup.pool)
    finally:
        await sup.stop()
