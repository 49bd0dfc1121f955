"""The IPyParallel cluster: a local one started here, or an existing one joined.

Local clusters run one engine set per engine so each engine can be stopped
and replaced alone. Nothing here assumes engines are local: engines of a
joined cluster are known only by what they report about themselves.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import ipyparallel as ipp
import psutil

from llmsup.supervisor.aio import within
from llmsup.supervisor.leftovers import ProcessLedger
from llmsup.supervisor.rundir import prepare_run_dir
from llmsup.supervisor.settings import Settings

log = logging.getLogger("llmsup.cluster")


class ClusterManager:
    def __init__(self, settings: Settings, ledger: ProcessLedger) -> None:
        self.settings = settings
        self.ledger = ledger
        self.cluster: ipp.Cluster | None = None
        self.client: ipp.Client | None = None
        self._set_ids = itertools.count()

    @property
    def local(self) -> bool:
        """True when this process started the cluster (and can start engines)."""
        return self.cluster is not None

    async def start(self) -> None:
        ipython_dir = self.settings.ipython_dir.resolve()
        prepare_run_dir(ipython_dir, "IPython directory")  # 0700: its connection files run code on engines
        os.environ["IPYTHONDIR"] = str(ipython_dir)
        if self.settings.cluster_file is not None:
            self.client = _join(self.settings.cluster_file)
            log.info("joined cluster %s: %d engines", self.settings.cluster_file, len(self.client.ids))
            return
        _remove_stale_connection_files(ipython_dir / "profile_llmsup")
        self.cluster = ipp.Cluster(
            n=0,
            cluster_id="llmsup",
            profile_dir=str(ipython_dir / "profile_llmsup"),
            controller_ip="127.0.0.1",
            controller_args=[f"--HeartMonitor.period={self.settings.heartbeat_ms}"],
            shutdown_atexit=False,
            log_level=logging.ERROR,  # engine deaths are logged by llmsup itself, with context
        )
        await self.cluster.start_controller()
        controller_pid = getattr(self.cluster.controller, "pid", None)
        if controller_pid:
            self.ledger.record("controller", int(controller_pid))
        self.client = await self.cluster.connect_client()
        log.info("controller started (pid %s), profile %s", controller_pid, self.cluster.profile_dir)

    def launch_engine(self, gpu: str) -> Callable[[], Any]:
        """Start one engine in its own set; returns the awaitable start. Local clusters only."""
        if self.cluster is None:
            raise RuntimeError("engines can only be started on a local cluster")
        set_id = f"e{next(self._set_ids)}"
        env = {"LLMSUP_ENGINE_SET": set_id, "CUDA_VISIBLE_DEVICES": gpu, "IPYTHONDIR": os.environ["IPYTHONDIR"]}
        return set_id, self.cluster.start_engines(1, engine_set_id=set_id, environment=env)

    def set_pids(self, set_id: str) -> list[int]:
        """The processes IPyParallel's launcher started for this engine set (local clusters)."""
        launcher = self.cluster.engines.get(set_id) if self.cluster is not None else None
        children = getattr(launcher, "launchers", {}) or {}
        return [int(child.pid) for child in children.values() if getattr(child, "pid", None)]

    async def stop_engine_set(self, set_id: str) -> None:
        if self.cluster is not None and set_id in self.cluster.engines:
            try:
                await self.cluster.stop_engines(set_id)
            except Exception as exc:  # the set may already be gone; stopping is best effort
                log.warning("stopping engine set %s: %s", set_id, exc)
        self.ledger.forget(f"engine:{set_id}")

    def engine_ids(self) -> set[int]:
        assert self.client is not None
        return set(self.client.ids)

    def apply(self, engine_id: int, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on exactly this engine; a concurrent future of its result."""
        assert self.client is not None
        return self.client[engine_id].apply_async(fn, *args)

    def send_signal(self, engine_id: int, sig: int) -> Future:
        """Signal one engine through the controller and its nanny (works for remote engines)."""
        assert self.client is not None
        return self.client.send_signal(sig, targets=[engine_id], block=False)

    async def shutdown_engines(self, engine_ids: list[int], timeout: float = 5) -> None:
        """Ask engines to exit cleanly (shutdown_request) instead of a SIGTERM mid-loop."""
        if self.client is None or not engine_ids:
            return
        try:
            fut = self.client.shutdown(targets=engine_ids, block=False)
            await within(asyncio.wrap_future(fut), timeout)
        except Exception as exc:  # stop_cluster below still stops them
            log.debug("engine shutdown request: %s", exc)

    def controller_alive(self) -> bool:
        """False once the controller this process started has died (local clusters; True when joined)."""
        pid = getattr(self.cluster.controller, "pid", None) if self.cluster is not None else None
        if not pid:
            return True
        try:
            return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    async def restart(self) -> None:
        """A new controller after the old one died: the old engines are stopped (they cannot reach it), the
        client reconnects; engines are launched again by the caller."""
        dead = getattr(self.cluster.controller, "pid", None) if self.cluster is not None else None
        await self.stop()
        if dead:
            # Its scheduler processes outlive it in its process group (its own session). A group whose leader is
            # dead keeps its id while any member lives, and no new process can get that id: killpg is safe.
            try:
                os.killpg(int(dead), signal.SIGKILL)
            except OSError:  # no such group any more
                pass
        for name in [n for n in self.ledger.entries if n.startswith(("engine:", "nanny:", "controller"))]:
            self.ledger.kill(name)
        await self.start()

    async def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            try:
                await within(self.cluster.stop_cluster(), timeout=30)
            except Exception as exc:  # leftovers are killed by the ledger below
                log.warning("stopping cluster: %s", exc)
            self.cluster = None


def _join(path: Path) -> ipp.Client:
    """Connect to a running cluster from its cluster file (``cluster-*.json``) or client connection file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"cannot read cluster file {path}: {exc}") from None
    if "cluster" in data:  # written by ipp.Cluster / ipcluster
        return ipp.Cluster.from_file(str(path)).connect_client_sync()
    return ipp.Client(str(path))


def _remove_stale_connection_files(profile_dir: Path) -> None:
    """Files of a controller that died with its supervisor would point a new client at dead ports."""
    security = profile_dir / "security"
    for path in [*security.glob("ipcontroller-llmsup-*.json"), security / "cluster-llmsup.json"]:
        path.unlink(missing_ok=True)
