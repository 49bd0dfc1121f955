"""The engine driver over a real IPyParallel cluster: does what the core asks, reports what happened.

No job or engine state is written here. Each request returns at once; its
outcome is reported to the core's sink as a typed event, never by calling the
core back in the middle of its own work (reports go through ``call_soon``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from llmsup.engines import batch, messages, runtime
from llmsup.engines.messages import Abort, Hello, HostBeat, HostOrder, JobSpec, Stop, Submit
from llmsup.supervisor.aio import within
from llmsup.supervisor.cluster import engine_start
from llmsup.supervisor.cluster.control import ControlChannel
from llmsup.supervisor.cluster.curve import ChannelGate
from llmsup.supervisor.cluster.leftovers import ProcessLedger
from llmsup.supervisor.cluster.manager import ClusterManager
from llmsup.supervisor.cluster.signals import interrupt_main_thread, kill_group
from llmsup.supervisor.cluster.task_errors import task_failure
from llmsup.supervisor.core import outcomes
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.engine_state import Engine, EngineState
from llmsup.supervisor.settings import Settings

log = logging.getLogger("llmsup.engines")
Sink = Callable[[ev.Report], None]


class ClusterDriver:
    def __init__(self, settings: Settings, cluster: ClusterManager, ledger: ProcessLedger, sink: Sink,
                 control: ControlChannel | None, gate: ChannelGate | None = None,
                 refused: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.refused = refused or (lambda reason: None)  # counts a refused peer or claim, by reason
        self.gate = gate  # each engine gets a key pair of its own on llmsup's channels (None: no keys)
        self.cluster = cluster
        self.ledger = ledger
        self.sink = sink
        self.control = control
        self.local_key = runtime.host_key()
        self._known: set[int] = set()
        self._launched: set[str] = set()  # engine sets started here
        self._agents: set[str] = set()  # join agents heard on the control channel
        self._revoked_hosts: set[str] = set()  # host keys an admin revoked: their agents are admitted no more
        self._refusals_logged: set[str] = set()
        self._serving: dict[int, asyncio.Future[Any]] = {}  # batched engines' serving tasks
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._restarting = False
        self._generation = 0  # a new one for each controller: engine ids start again from 0

    @property
    def can_launch(self) -> bool:
        return self.cluster.local

    def is_local(self, engine: Engine) -> bool:
        return engine.host_key == self.local_key

    # plumbing ---------------------------------------------------------------------------
    def _report(self, event: ev.Report) -> None:
        asyncio.get_running_loop().call_soon(self.sink, event)

    def _spawn(self, coro: Awaitable[Any], what: str) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("engine driver: %s failed: %r", what, t.exception())

        task.add_done_callback(done)

    def _apply(self, engine_id: int, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return asyncio.wrap_future(self.cluster.apply(engine_id, fn, *args))

    # engines coming -------------------------------------------------------------------------
    def poll(self) -> None:
        """Report engines that registered with the controller, and engines that left it; a dead controller."""
        if self._restarting:
            return
        if not self.cluster.controller_alive():
            log.error("the IPyParallel controller died: starting a new one")
            self._restarting = True
            self._generation += 1  # answers of the old cluster's engines are not reported any more
            for task in list(self._tasks):
                task.cancel()
            self._known.clear()
            self._launched.clear()
            if self.gate is not None:  # the new controller numbers its engines from 0 again
                self.gate.revoke_engines()
            self.sink(ev.ControllerLost())
            self._spawn(self._restart_cluster(), "controller restart")
            return
        ids = self.cluster.engine_ids()
        for eid in sorted(ids - self._known):
            self._known.add(eid)
            self._report(ev.EngineRegistered(eid))
        for eid in sorted(self._known - ids):
            self._known.discard(eid)
            if self.gate is not None:
                self.gate.revoke_engine(eid)
            if self.control is not None:
                self.control.forget(eid)
            self._report(ev.EngineUnregistered(eid))

    async def _restart_cluster(self) -> None:
        delay = 1.0
        while not self._stopping:
            try:
                await self.cluster.restart()
                break
            except Exception:  # try again: without a controller nothing runs
                log.exception("starting a new controller failed; trying again in %.0fs", delay)
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)
        self._restarting = False
        self._report(ev.ControllerRestarted())

    def engine_ids(self) -> set[int]:
        return self.cluster.engine_ids()

    def launch(self, gpu: str, host: str = "") -> str:
        if self._restarting:
            raise RuntimeError("the controller is being restarted")
        set_id, start = self.cluster.launch_engine(gpu, host)
        self._launched.add(set_id)
        self._spawn(self._start_set(set_id, start), f"launch {set_id}")
        return set_id

    async def _start_set(self, set_id: str, start: Awaitable[Any]) -> None:
        try:
            await start
        except Exception as exc:  # reported: the core forgets the launch
            self._report(ev.LaunchFailed(set_id, f"{type(exc).__name__}: {exc}"))
            return
        if self.settings.engine_launcher == "local":  # other launchers' pids are of other hosts (ssh) or jobs
            for pid in self.cluster.set_pids(set_id):
                self.ledger.record(f"engine:{set_id}", pid)

    def identify(self, engine_id: int) -> None:
        self._spawn(self._identify(engine_id), f"identify engine {engine_id}")

    async def _identify(self, engine_id: int) -> None:
        try:
            data = await within(self._apply(engine_id, runtime.identity), 60)
            ident = ev.EngineIdentity.from_dict(data)
        except Exception as exc:  # reported: the core replaces it
            self._report(ev.EngineFailed(engine_id, f"identity: {type(exc).__name__}: {exc}"))
            return
        if ident.engine_set in self._launched:  # recorded only if on this host and still that process here
            self.ledger.record(f"engine:{ident.engine_set}", ident.pid, ident.host_key, ident.pid_started)
            if ident.nanny_pid:  # its own session: stopping the engine's group misses it
                self.ledger.record(f"nanny:{ident.engine_set}", ident.nanny_pid, ident.host_key)
        self._report(ev.EngineIdentified(engine_id, ident))

    def load(self, engine: Engine, config: dict[str, Any]) -> None:
        self._spawn(self._load(engine, config), f"load {engine.tag()}")

    async def _load(self, engine: Engine, config: dict[str, Any]) -> None:
        """Initialise the engine; its start timeout counts from its latest progress (download, load, warm-up)."""
        t0 = time.monotonic()

        def progressed(p: engine_start.Progress) -> None:
            self._report(ev.EngineProgress(engine.id, p.phase, p.detail, p.log_file))

        if self.gate is not None and config.get("channel_keys"):  # its own key: it can speak for itself only
            config = {**config, "channel_keys": self.gate.engine_keys(engine.id)}
        try:
            task = self.cluster.apply(engine.id, runtime.init_engine, config)
            ident = await engine_start.wait_started(asyncio.wrap_future(task), engine_start.published(task),
                                                    self.settings.engine_start_timeout_s, progressed)
        except Exception as exc:  # reported: the core replaces it
            self._report(ev.EngineFailed(engine.id, f"init: {type(exc).__name__}: {exc}"))
            return
        gpu_mem = ident.get("gpu_mem_mb")
        self._report(ev.EngineLoaded(engine.id, ident.get("backend") or {}, float(ident.get("rss_mb", 0.0)),
                                     time.monotonic() - t0, float(gpu_mem) if gpu_mem is not None else None,
                                     log_file=str(ident.get("log_file") or "")))

    def start_serving(self, engine: Engine) -> None:
        assert self.control is not None
        config = {"control_address": self.control.address, "test_hooks": self.settings.engine_test_hooks}
        fut = self._apply(engine.id, batch.serve, config)
        self._serving[engine.id] = fut
        generation = self._generation

        def ended(f: asyncio.Future[Any]) -> None:
            if self._serving.get(engine.id) is f:
                del self._serving[engine.id]
            if self._stopping or generation != self._generation:
                return
            why = "serving loop returned" if not f.cancelled() and f.exception() is None else (
                f"serving loop failed: {f.exception() if not f.cancelled() else 'cancelled'}")
            self.sink(ev.EngineFailed(engine.id, why))

        fut.add_done_callback(ended)

    def on_hello(self, engine_id: int, hello: Hello) -> None:
        self.sink(ev.EngineServing(engine_id))

    # join agents (``llmsup join`` on other hosts) ------------------------------------------------------
    def on_host(self, agent: str, beat: HostBeat) -> None:
        self._agents.add(agent)
        self.sink(ev.HostHeard(agent, beat.host, beat.host_key, beat.gpus, beat.engines, beat.standby, beat.pids))

    def on_enrol(self, beat: HostBeat) -> HostOrder | None:
        """A join agent asks (under the join file's key) that its own key be admitted: its answer, None for none."""
        if beat.host_key in self._revoked_hosts:
            self.refused("revoked")
            self._log_once(f"revoked {beat.host_key}", "refused the join agent of revoked host %s (%s): told to stop",
                           beat.host, beat.host_key)
            return HostOrder(stop=True)
        if self.gate is None:
            return None
        agent = self.gate.admit_agent(beat.agent_key)
        if agent is None:
            self.refused("claim")
            self._log_once(f"key {beat.host_key}", "refused the key of the join agent of %s: malformed, revoked, or "
                           "too many agents", beat.host)
            return None
        log.info("admitted the join agent of %s as %s", beat.host, agent)
        return HostOrder(enrolled=True)

    def _log_once(self, what: str, message: str, *args: object) -> None:
        """A refusal an agent may repeat at every beat: logged the first time (then only counted)."""
        if what not in self._refusals_logged and len(self._refusals_logged) < 1000:
            self._refusals_logged.add(what)
            log.warning(message, *args)

    def order_host(self, agent: str, fence: tuple[int, ...] = (), stop: bool = False) -> None:
        if self.control is None or not self.control.order(agent, HostOrder(fence, stop)):
            log.warning("join agent %s not reachable for its order (fence %s, stop %s)", agent, list(fence), stop)

    def revoke_host(self, host_key: str, agent: str, engine_ids: tuple[int, ...]) -> None:
        """An admin revoked the host: its agent is told to stop, then its keys and its engines' are revoked (a new
        connection with one fails the handshake; what an old one still delivers is dropped), and no agent of that
        host is admitted again."""
        self._revoked_hosts.add(host_key)
        if agent:
            self.order_host(agent, stop=True)  # queued on its connection, which the revocation does not close
            self._agents.discard(agent)
        if self.gate is not None:
            for eid in engine_ids:
                self.gate.revoke_engine(eid)
            if agent:
                self.gate.revoke(agent)
        if self.control is not None:
            for eid in engine_ids:
                self.control.forget(eid)
            self.control.forget_peer(agent)

    # jobs --------------------------------------------------------------------------------------
    def dispatch(self, engine: Engine, key: str, spec: JobSpec, deadline_s: float | None) -> None:
        if engine.batched:
            assert self.control is not None
            engine_id = engine.id

            def unreachable() -> None:
                self._report(ev.JobReply(key, error=ev.TaskFailure("unreachable", f"engine {engine_id} not reachable on "
                                                                      "its control channel"), dispatched=False))

            self.control.queue(engine_id, Submit(key, spec.prompt, deadline_s, spec.params), unreachable)
            return
        try:
            fut = self._apply(engine.id, runtime.run_job, messages.plain(spec))
        except Exception as exc:  # the engine left the cluster before we noticed: the job goes back
            self._report(ev.JobReply(key, error=ev.TaskFailure("unreachable", f"engine {engine.id} gone at dispatch: {exc}"),
                                     dispatched=False))
            return

        generation = self._generation

        def replied(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or generation != self._generation:
                return
            exc = f.exception()
            self.sink(ev.JobReply(key, error=task_failure(exc)) if exc is not None else
                      ev.JobReply(key, result=outcomes.decode_reply(f.result())))

        fut.add_done_callback(replied)

    def abort(self, engine: Engine, key: str) -> None:
        if self.control is not None:
            self.control.send(engine.id, Abort(key, "cancelled"))

    # the ladder's means -----------------------------------------------------------------------------
    def uses_direct_signal(self, engine: Engine) -> bool:
        return self.settings.signal_path != "ipp" and self.is_local(engine)

    def sigint(self, engine: Engine, key: str) -> None:
        if self.uses_direct_signal(engine):
            try:
                interrupt_main_thread(engine.pid, started=engine.pid_started)
            except OSError as exc:  # gone, or not ours to signal: the probe and SIGKILL steps follow
                log.warning("%s SIGINT failed: %s", engine.tag(), exc)
                return
            self._report(ev.SigintDelivered(key))
            return
        self._spawn(self._remote_signal(engine, signal.SIGINT, key), f"SIGINT {engine.tag()}")

    async def _remote_signal(self, engine: Engine, sig: int, key: str | None) -> None:
        try:
            # The nanny's answer means the signal was delivered: it cannot arrive late, after the engine
            # has moved on to another job.
            await within(asyncio.wrap_future(self.cluster.send_signal(engine.id, sig)), self.settings.kill_grace_s)
        except Exception as exc:  # the ladder's later steps follow regardless
            log.warning("%s send_signal(%s) failed: %s", engine.tag(), signal.Signals(sig).name,
                        f"{type(exc).__name__}: {exc}")
            if sig == signal.SIGINT:
                return
        self._report(ev.SigintDelivered(key) if key is not None else ev.EngineKilled(engine.id))

    def probe(self, engine: Engine, key: str) -> None:
        fut = self._apply(engine.id, runtime.ping)
        generation = self._generation

        def answered(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is None and generation == self._generation:
                self.sink(ev.ProbeAnswered(key))

        fut.add_done_callback(answered)

    def kill(self, engine: Engine) -> None:
        if self.is_local(engine):
            kill_group(engine.pid, engine.pid_started)
            self._report(ev.EngineKilled(engine.id))
        else:
            self._spawn(self._remote_signal(engine, signal.SIGKILL, None), f"SIGKILL {engine.tag()}")

    # engines going ------------------------------------------------------------------------------------
    def retire(self, engine: Engine, release: bool) -> None:
        self._spawn(self._retire(engine, release), f"retire {engine.tag()}")

    async def _retire(self, engine: Engine, release: bool) -> None:
        if release:
            await self._release(engine)
        if engine.set_id and self.is_local(engine):
            kill_group(engine.pid, engine.pid_started)  # never left running beside its replacement
        self._report(ev.EngineRetired(engine.id))
        if engine.set_id:
            await self.cluster.stop_engine_set(engine.set_id)
            self.ledger.kill(f"nanny:{engine.set_id}")  # a nanny can hang in zmq term after its engine died
            self._launched.discard(engine.set_id)

    async def _release(self, engine: Engine, timeout: float = 30) -> None:
        serving = self._serving.get(engine.id)
        if serving is not None and not serving.done() and self.control is not None:
            self.control.send(engine.id, Stop())  # the serving loop answers what it holds, then returns
            try:
                await within(asyncio.shield(serving), timeout)
            except Exception as exc:  # release below still runs; retire kills if it must
                log.warning("%s serving loop did not stop: %s", engine.tag(), exc)
        try:
            await within(self._apply(engine.id, runtime.release_engine), timeout)
        except Exception as exc:  # the stop still runs; kill if it must
            log.warning("%s release failed: %s", engine.tag(), exc)

    async def stop(self, engines: list[Engine], busy: set[int]) -> None:
        """Release every idle engine's backend, then stop them all; engines that were running jobs
        (``busy``: those jobs are already back in the queue) are killed, not waited for."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        killed = [e for e in engines if e.id in busy or e.jobs or e.state is not EngineState.IDLE]
        idle = [e for e in engines if e not in killed]
        for engine in killed:
            if self.is_local(engine) and engine.set_id:
                kill_group(engine.pid, engine.pid_started)
        await asyncio.gather(*(self._release(e, timeout=15) for e in idle))
        for agent in self._agents:  # a join agent's engines are its own to stop (released first, above)
            self.order_host(agent, stop=True)
        own = [e.id for e in idle if e.set_id]
        if own and self.cluster.local:
            await self.cluster.shutdown_engines(own)
