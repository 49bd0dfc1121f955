"""The IPyParallel cluster: a controller started here (its engines started by IPyParallel's own launchers), or an
existing one joined.

The controller listens on ``cluster_ip`` (loopback by default) with CURVE on (IPyParallel's own encryption and
authentication), and each start writes ``<run-dir>/join.json`` for engines from other hosts. Engines this server
starts run one engine set per engine (so each can be stopped and replaced alone), through the launcher named by
``engine_launcher`` (local processes, or ssh / mpi / slurm ... configured in IPyParallel's own profile); ssh sets
go to one host each, from ``hosts``. Nothing here assumes engines are local: engines are known only by what they
report about themselves.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import logging
import math
import os
import signal
import socket
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipyparallel as ipp
import psutil

from llmsup.supervisor.aio import within
from llmsup.supervisor.cluster import plain_replies
from llmsup.supervisor.cluster.curve import ChannelKeys
from llmsup.supervisor.cluster.joinfile import JoinInfo
from llmsup.supervisor.cluster.leftovers import ProcessLedger
from llmsup.supervisor.cluster.ssh_launcher import SSHEngineSetLauncherOffLoop
from llmsup.supervisor.rundir import prepare_run_dir
from llmsup.supervisor.runfiles import JOIN_FILE, PROFILE_DIR
from llmsup.supervisor.settings import Settings

log = logging.getLogger("llmsup.cluster")


WILDCARD = ("0.0.0.0", "*", "")


def listen_addresses(settings: Settings) -> tuple[str, str]:
    """(bind, advertised) zmq addresses of llmsup's channels: loopback unless ``cluster_ip`` says otherwise
    (every interface for 0.0.0.0, advertised under this host's address)."""
    ip = settings.cluster_ip
    if ip == "127.0.0.1":
        return settings.stream_bind, settings.stream_bind
    if ip in WILDCARD:
        return "tcp://0.0.0.0", f"tcp://{this_host_address()}"
    return f"tcp://{ip}", f"tcp://{ip}"


def this_host_address() -> str:
    """An address other hosts may reach this one at (its name's address; the name itself if it resolves not)."""
    name = socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError:
        return name


def heartbeat_misses(settings: Settings) -> int:
    """Missed heartbeats before the controller drops an engine: later than llmsup takes its host as lost (with
    2 s to spare), so that a cut-off host's jobs are re-queued as a host loss (uncharged), not as engine deaths."""
    return max(10, math.ceil((settings.host_loss_timeout_s + 2) * 1000 / settings.heartbeat_ms))


def engine_interface(settings: Settings) -> str:
    """Where the controller listens for engines: ``cluster_ip``; for a wildcard, this host's address (where engines
    are told to connect), so that the client ports can stay on loopback (0.0.0.0 only if this host has no address)."""
    if settings.cluster_ip not in WILDCARD:
        return settings.cluster_ip
    address = this_host_address()
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        return "0.0.0.0"
    return address


def controller_args(settings: Settings) -> list[str]:
    """The controller's command line: engines' ports on ``cluster_ip``; the client ports (and the monitor) on
    loopback, for this server's client only; CURVE on (encrypted, and only key holders get in); no task database
    (IPyParallel's default keeps every task's request and result, prompts included, for any client to query)."""
    ip, client_ip = engine_interface(settings), "127.0.0.1"
    if ip == "0.0.0.0":  # the Hub binds its registration port on both; a wildcard takes loopback's port too
        client_ip = ip
    return [f"--HeartMonitor.period={settings.heartbeat_ms}",
            f"--HeartMonitor.max_heartmonitor_misses={heartbeat_misses(settings)}",
            "--IPController.enable_curve=True",
            f"--IPController.engine_ip={ip}", f"--IPController.client_ip={client_ip}",
            "--IPController.monitor_ip=127.0.0.1",
            "--IPController.db_class=NoDB"]


@dataclass(frozen=True)
class Channels:
    """llmsup's own channels, for the join file."""

    stream_address: str
    control_address: str
    keys: ChannelKeys


class ClusterManager:
    def __init__(self, settings: Settings, ledger: ProcessLedger) -> None:
        self.settings = settings
        self.ledger = ledger
        self.cluster: ipp.Cluster | None = None
        self.client: ipp.Client | None = None
        self.channels: Channels | None = None  # set before start: the join file is written at each start
        self._set_ids = itertools.count()
        self._hosts = itertools.cycle(settings.hosts or [""])

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
        _remove_stale_connection_files(ipython_dir / PROFILE_DIR)
        s = self.settings
        wildcard = s.cluster_ip in WILDCARD
        self.cluster = ipp.Cluster(
            n=0,
            cluster_id="llmsup",
            profile_dir=str(ipython_dir / PROFILE_DIR),
            controller_location=this_host_address() if wildcard else s.cluster_ip,
            controller_args=controller_args(s),
            engine_launcher_class=SSHEngineSetLauncherOffLoop if s.engine_launcher == "ssh" else s.engine_launcher,
            shutdown_atexit=False,
            log_level=logging.ERROR,  # engine deaths are logged by llmsup itself, with context
        )
        plain_replies.install()  # before the client exists: engines' replies are read as plain data only
        await self.cluster.start_controller()
        controller_pid = getattr(self.cluster.controller, "pid", None)
        if controller_pid:
            self.ledger.record("controller", int(controller_pid))
        with warnings.catch_warnings():
            # The client ports listen on loopback while the engines' ports are on the cluster address: IPyParallel
            # warns that such a controller might be on another machine. It is this process's own controller.
            warnings.filterwarnings("ignore", message=r"\s*Controller appears to be listening on localhost",
                                    category=RuntimeWarning)
            self.client = await self.cluster.connect_client()
        log.info("controller started (pid %s) on %s, profile %s", controller_pid, s.cluster_ip,
                 self.cluster.profile_dir)
        await self._write_join_file()

    async def _write_join_file(self) -> None:
        if self.cluster is None or self.channels is None:
            return
        info = await self.cluster.controller.get_connection_info()
        s, ch = self.settings, self.channels
        path = s.run_dir / JOIN_FILE
        JoinInfo(dict(info["engine"]), ch.stream_address, ch.control_address, ch.keys.for_clients(), s.heartbeat_ms,
                 s.host_loss_timeout_s).write(path)
        log.info("engines on other hosts join with: llmsup join %s --engines N", path.resolve())

    @property
    def launches_remote(self) -> bool:
        """True when this server's launcher starts engines on other hosts (ssh), not as local processes."""
        return bool(self.settings.hosts) and self.settings.engine_launcher == "ssh"

    def next_host(self) -> str:
        """The host the next engine set goes to ("" for launchers that choose themselves: local, mpi, batch)."""
        return next(self._hosts) if self.launches_remote else ""

    def launch_engine(self, gpu: str, host: str = "") -> tuple[str, Awaitable[Any]]:
        """Start one engine in its own set (on ``host`` for the ssh launcher); returns the set id and the
        awaitable start. Clusters started here only."""
        if self.cluster is None:
            raise RuntimeError("engines can only be started on a local cluster")
        set_id = f"e{next(self._set_ids)}"
        env = {"LLMSUP_ENGINE_SET": set_id}
        options: dict[str, Any] = {}
        launcher = self.settings.engine_launcher
        if launcher in ("local", "ssh"):  # the devices of the plan (ssh: hosts like this one); a batch system or
            env["CUDA_VISIBLE_DEVICES"] = gpu  # mpiexec gives its engines their devices itself
        if self.launches_remote:
            options["engines"] = {host or self.next_host(): 1}
        elif launcher == "local":
            env["IPYTHONDIR"] = os.environ["IPYTHONDIR"]  # a path of this host
        return set_id, self.cluster.start_engines(1, engine_set_id=set_id, environment=env, **options)

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
        result = self.client[engine_id].apply_async(fn, *args)
        plain_replies.forget_when_done(self.client, result, asyncio.get_running_loop())
        return result

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
