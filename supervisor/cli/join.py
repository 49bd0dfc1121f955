"""``llmsup join FILE --engines N``: the agent that runs a host's engines for a server on another host.

Started on each host by whatever starts hosts there (a batch job, a pod, a systemd unit), with the server's
``<run-dir>/join.json``. It starts N IPyParallel engines (plus standbys if asked) that register with the server's
controller, pinned to this host's GPUs by their host-local rank; keeps them alive (an engine that dies, or that
the server killed, is started anew, with a backoff for one that keeps dying at start); and beats
:class:`HostBeat` on the server's control channel: this host's name, GPUs and engine processes. It makes a CURVE key
pair of its own at start (the secret never leaves this process): its first beats, under the join file's key, carry
its public key; once the server answers ``enrolled`` it reconnects with its own key and beats under it (a join file
that names another control channel: admitted anew). The server answers with a :class:`HostOrder` when it must:
``fence`` the engines it took out while this host was cut off (they are killed and started anew: a job the server
re-ran elsewhere must not go on here), or ``stop`` (the server stops, or an admin revoked this host). SIGTERM or
SIGINT stops every engine and ends the agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import zmq
import zmq.asyncio

from llmsup.engines import placement
from llmsup.engines.messages import HostBeat, HostOrder, ProtocolError, decode_for_engine, encode
from llmsup.engines.runtime import host_key
from llmsup.engines.stream import secure_client
from llmsup.supervisor.cluster.joinfile import JoinInfo
from llmsup.supervisor.rundir import prepare_run_dir

log = logging.getLogger("llmsup.join")
MAX_BACKOFF_S = 30.0
SHORT_LIFE_S = 10.0  # an engine that dies sooner than this after its start is started again after a backoff
STOP_GRACE_S = 5.0


@dataclass
class EngineSlot:
    """One place this agent keeps an engine in (its devices stay with the place)."""

    index: int
    gpu: str
    standby: bool
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0  # monotonic: not before
    backoff_s: float = 0.0
    starts: int = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


def kill_engine(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal an engine's process group and every process under it (its nanny lives in a session of its own)."""
    try:
        under = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        under = []
    for target in [proc.pid, *(p.pid for p in under)]:
        try:
            if target == proc.pid:
                os.killpg(target, sig)
            else:
                os.kill(target, sig)
        except OSError:  # gone already
            pass


@dataclass
class JoinAgent:
    info: JoinInfo
    engines: int
    standby: int = 0
    work_dir: Path = field(default_factory=lambda: Path(".llmsup-join"))
    beat_s: float = 0.0  # 0: a quarter of the server's host-loss timeout, at most 1 s
    join_file: Path | None = None  # re-read when it changes: a new controller after the old one died
    pool: str = ""  # the server's engine pool these engines serve ("": its first)
    slots: list[EngineSlot] = field(default_factory=list)
    stopping: bool = False

    def __post_init__(self) -> None:
        total = self.engines + self.standby
        visible = placement.visible_gpus()
        self.gpus = len(visible)
        devices = placement.plan(total, visible)
        self.slots = [EngineSlot(i, gpu, i >= self.engines) for i, gpu in enumerate(devices)]
        self.host = socket.gethostname()
        self.host_key = host_key()
        public, secret = zmq.curve_keypair()
        self.public_key, self._secret_key = public.decode(), secret.decode()
        self.enrolled = False  # the server admitted this agent's own key: it connects with it
        if self.beat_s <= 0:
            self.beat_s = min(1.0, self.info.host_loss_s / 4)
        self._join_mtime = self._mtime()

    def _mtime(self) -> float:
        try:
            return self.join_file.stat().st_mtime if self.join_file is not None else 0.0
        except OSError:
            return 0.0

    def refresh(self) -> bool:
        """The server rewrites its join file when it starts a new controller (the old one died): the engines of
        the old one can never serve again; they are replaced by engines of the new one. Returns True when the
        control channel (its address or keys) changed: the agent's socket is to be made anew."""
        mtime = self._mtime()
        if self.join_file is None or mtime == self._join_mtime:
            return False
        self._join_mtime = mtime
        try:
            info = JoinInfo.read(self.join_file)
        except ValueError as exc:  # half written, or replaced by something else: keep what we have
            log.warning("%s changed but cannot be read: %s", self.join_file, exc)
            return False
        old, self.info = self.info, info
        if info.controller != old.controller:
            log.warning("the server runs a new controller: replacing this host's engines")
            self.fence(tuple(pid for pid in (s.pid for s in self.slots) if pid is not None))
        changed = (info.control_address, info.curve) != (old.control_address, old.curve)
        self.enrolled = self.enrolled and not changed  # another server (its keys): admitted anew
        return changed

    # engines ------------------------------------------------------------------------------------
    def _env(self, slot: EngineSlot) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("LLMSUP_ENGINE_SET", "LLMSUP_POOL")}
        if self.pool:
            env["LLMSUP_POOL"] = self.pool  # the engine says it at registration: the server loads the pool's model
        env.update(IPP_CONNECTION_INFO=json.dumps(self.info.controller), CUDA_VISIBLE_DEVICES=slot.gpu,
                   IPYTHONDIR=str(self.work_dir / "ipython"), LLMSUP_ENGINE_RUN_DIR=str(self.work_dir),
                   LLMSUP_ENGINES_ON_HOST=str(len(self.slots)))
        return env

    def start(self, slot: EngineSlot) -> None:
        slot.starts += 1
        out = open(self.work_dir / f"engine-{slot.index}.log", "ab")  # the child keeps its own copy
        try:
            slot.proc = subprocess.Popen([sys.executable, "-m", "ipyparallel.engine", "--log-level=WARN"],
                                         env=self._env(slot), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True, cwd=self.work_dir)
        finally:
            out.close()
        slot.started_at = time.monotonic()
        log.info("engine %d started (pid %d, %s%s)", slot.index, slot.proc.pid, f"GPU {slot.gpu}" if slot.gpu else "CPU",
                 ", standby" if slot.standby else "")

    def keep_alive(self, now: float) -> None:
        """Start the engines that are not running (and are due)."""
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is not None:
                lived = now - slot.started_at
                slot.backoff_s = 0.0 if lived >= SHORT_LIFE_S else min(MAX_BACKOFF_S, max(1.0, slot.backoff_s * 2))
                slot.restart_at = now + slot.backoff_s
                log.warning("engine %d (pid %d) exited with status %s after %.1fs; starting it again%s", slot.index,
                            slot.proc.pid, slot.proc.returncode, lived,
                            f" in {slot.backoff_s:.0f}s" if slot.backoff_s else "")
                slot.proc = None
            if slot.proc is None and now >= slot.restart_at and not self.stopping:
                self.start(slot)

    def fence(self, pids: tuple[int, ...]) -> None:
        """Kill these engines now (the server took them out while this host was cut off, or they belong to a
        controller that is gone); they start anew."""
        for slot in self.slots:
            if slot.proc is not None and slot.pid in pids:
                log.warning("engine %d (pid %d): taken out by the server; replacing it", slot.index, slot.proc.pid)
                kill_engine(slot.proc)
                slot.proc.wait()
                slot.proc = None
                slot.restart_at = 0.0

    def stop_all(self) -> None:
        running = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for proc in running:
            kill_engine(proc, signal.SIGTERM)
        end = time.monotonic() + STOP_GRACE_S
        for proc in running:
            try:
                proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_engine(proc)
                proc.wait()
        for slot in self.slots:
            slot.proc = None

    # the server -------------------------------------------------------------------------------------
    def beat(self) -> HostBeat:
        pids = tuple(pid for pid in (s.pid for s in self.slots) if pid is not None)
        return HostBeat(self.host, self.host_key, self.gpus, self.engines, self.standby, pids, self.public_key)

    def channel_keys(self) -> dict[str, str]:
        """The keys to connect with: this agent's own once admitted, else the join file's (to be admitted)."""
        if not self.enrolled:
            return self.info.curve
        return {"server_public": self.info.curve["server_public"], "client_public": self.public_key,
                "client_secret": self._secret_key}

    def on_order(self, raw: bytes) -> bool:
        """Act on the server's order; True when the agent is to reconnect (its own key was admitted)."""
        try:
            order = decode_for_engine(raw, expect=(HostOrder,))
        except ProtocolError as exc:
            log.warning("dropped an unreadable message from the server: %s", exc)
            return False
        admitted = order.enrolled and not self.enrolled
        if admitted:
            log.info("the server admitted this agent's own key: reconnecting with it")
            self.enrolled = True
        if order.fence:
            self.fence(order.fence)
        if order.stop:
            log.info("the server asked this host's engines to stop")
            self.stopping = True
        return admitted

    async def run(self) -> None:
        """Until SIGTERM / SIGINT or the server's stop order (also the answer to an agent of a revoked host)."""
        # Engines run there (cwd, IPYTHONDIR): a directory another user made first, or may write, would run their
        # code as this agent. Refused as the server refuses such a run directory.
        prepare_run_dir(self.work_dir, "join work dir")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_soon)
        ctx = zmq.asyncio.Context()
        log.info("joining %s as %s with %d engines (%d standby), %d GPUs", self.info.control_address, self.host,
                 self.engines, self.standby, self.gpus)
        try:
            while not self.stopping:  # a socket per control channel and key: made anew when either changes
                sock = self._connect(ctx)
                try:
                    await self._loop(sock)
                finally:
                    sock.close(linger=0)
        finally:
            self.stop_all()
            ctx.term()

    def _connect(self, ctx: zmq.asyncio.Context) -> zmq.asyncio.Socket:
        sock = ctx.socket(zmq.DEALER)  # no identity: the server knows this agent by its key
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 4)  # beats are worth sending fresh or not at all
        secure_client(sock, self.channel_keys())
        sock.connect(self.info.control_address)
        return sock

    async def _loop(self, sock: zmq.asyncio.Socket) -> None:
        """Beat and read orders until stopped, until the join file names another control channel, or until this
        agent's own key is admitted (it reconnects with it)."""
        while not self.stopping:
            if self.refresh():
                log.warning("the server's control channel is now %s: connecting there", self.info.control_address)
                return
            self.keep_alive(time.monotonic())
            sent = asyncio.ensure_future(sock.send(encode(self.beat()), flags=zmq.NOBLOCK))  # an asyncio socket's
            sent.add_done_callback(_beat_sent)  # future: its error (zmq.Again while the network is down) read
            if await sock.poll(int(self.beat_s * 1000)):
                frames = await sock.recv_multipart()
                if len(frames) == 1 and self.on_order(frames[0]):
                    return

    def _stop_soon(self) -> None:
        log.info("stopping this host's engines")
        self.stopping = True


def _beat_sent(sent: asyncio.Future[Any]) -> None:
    if not sent.cancelled() and sent.exception() is not None:  # read: the beat is worth sending fresh or not at all
        log.debug("beat not sent: %s", sent.exception())


def run_agent(join_file: Path, engines: int, standby: int = 0, work_dir: Path | None = None, pool: str = "") -> None:
    """``llmsup join``: run the agent until it is told to stop."""
    info = JoinInfo.read(join_file)
    agent = JoinAgent(info, engines, standby, work_dir or Path(".llmsup-join").resolve(), join_file=join_file,
                      pool=pool)
    asyncio.run(agent.run())
