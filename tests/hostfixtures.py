"""A supervisor listening on the test bridge, and join agents (``llmsup join``) on namespace hosts."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import make_settings
from llmsup.supervisor.core.engine_state import EngineState
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings
from nethosts import HostNet, HostProcess, TestHost
from support.waiting import eventually_async as until  # noqa: F401 (the host tests import it from here)


def host_settings(net: HostNet, run_dir: Path, **overrides: object) -> Settings:
    """A supervisor whose controller and channels listen on the bridge (the server's address)."""
    values: dict[str, object] = dict(cluster_ip=net.server_address, heartbeat_ms=200, host_loss_s=3.0,
                                     kill_grace_s=3.0, engine_relaunch_s=1.0)
    values.update(overrides)
    return make_settings(run_dir, **values)


def start_agent(net: HostNet, host: TestHost, sup: Supervisor, engines: int, standby: int = 0,
                pool: str = "") -> HostProcess:
    """``llmsup join <run-dir>/join.json --engines N`` (``--pool``) on the host, as its PID namespace's pid 1."""
    join_file = (sup.settings.run_dir / "join.json").resolve()
    work = net.workdir / f"join-{host.name}"
    argv = [sys.executable, "-m", "llmsup.supervisor.cli", "join", str(join_file), "--engines", str(engines),
            "--standby", str(standby), "--work-dir", str(work), *(["--pool", pool] if pool else [])]
    return net.spawn(host, argv, log_name=f"agent-{host.name}")


def serving_on(sup: Supervisor, host_name: str) -> list[int]:
    return [e.id for e in sup.pool if e.host == host_name and e.state in (EngineState.IDLE, EngineState.BUSY)]
