"""Engine lifecycle: launch, adopt on registration, notice loss, kill, replace, recycle."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from llmsup.engines import batch, placement, runtime
from llmsup.supervisor.aio import within
from llmsup.supervisor.batching import ControlChannel
from llmsup.supervisor.cluster import ClusterManager
from llmsup.supervisor.leftovers import ProcessLedger
from llmsup.supervisor.metrics import Metrics
from llmsup.supervisor.pool import Engine, EnginePool, EngineState
from llmsup.supervisor.settings import Settings
from llmsup.supervisor.signals import kill_group

log = logging.getLogger("llmsup.engines")


class EngineManager:
    def __init__(
        self,
        settings: Settings,
        cluster: ClusterManager,
        pool: EnginePool,
        ledger: ProcessLedger,
        metrics: Metrics,
        engine_config: dict[str, Any],
        on_ready: Callable[[Engine], None],
        on_lost: Callable[[Engine, str, bool], None],
        control: ControlChannel | None = None,
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self.pool = pool
        self.ledger = ledger
        self.metrics = metrics
        self.engine_config = engine_config
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.local_key = runtime.host_key()
        self._set_gpu: dict[str, str] = {}  # engine set -> its devices (local clusters)
        self._known: set[int] = set()
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self.control = control
        self.slots = settings.slots_per_engine or default_slots(engine_config.get("backend", "sim"))
        self.batched = self.slots > 1

    # launching ---------------------------------------------------------------
    def plan(self, n: int) -> list[str]:
        return placement.plan(n, placement.detect_gpu_count(), self.settings.gpus_per_engine)

    async def launch(self, gpu: str) -> str:
        set_id, start = self.cluster.launch_engine(gpu)
        self._set_gpu[set_id] = gpu
        await start
        launcher = self.cluster.cluster.engines.get(set_id) if self.cluster.cluster else None
        for child in getattr(launcher, "launchers", {}).values():
            if getattr(child, "pid", None):
                self.ledger.record(f"engine:{set_id}", int(child.pid))
        return set_id

    async def start(self, n: int) -> None:
        if not self.cluster.local:
            return
        await asyncio.gather(*(self.launch(gpu) for gpu in self.plan(n)))

    def expected(self) -> int:
        """Engines the cluster should have (local: what we launched and keep replacing)."""
        return self.settings.engines if self.cluster.local else len(self.pool.engines)

    # registration and loss -----------------------------------------------------
    def poll(self) -> None:
        """Adopt newly registered engines; notice engines that vanished."""
        ids = self.cluster.engine_ids()
        for eid in sorted(ids - self._known):
            self._known.add(eid)
            self._spawn(self._adopt(eid))
        for eid in sorted(self._known - ids):
            self._known.discard(eid)
            engine = self.pool.get(eid)
            if engine is not None and engine.state not in (EngineState.RESTARTING, EngineState.DEAD):
                self._spawn(self.handle_lost(engine, "engine unregistered (process died or heartbeat lost)"))

    async def _adopt(self, eid: int) -> None:
        try:
            ident = await within(asyncio.wrap_future(self.cluster.apply(eid, runtime.identity)), 60)
            set_id = ident.get("engine_set", "")
            gpu = self._gpu_for(ident, set_id)
            config = dict(self.engine_config, engine_id=eid, gpu=gpu)
            engine = Engine(
                id=eid, host=ident["host"], host_key=ident["host_key"], pid=ident["pid"], pgid=ident["pgid"],
                gpu=gpu, set_id=set_id if set_id in self._set_gpu else "", slots=self.slots, started_at=time.time(),
                batched=self.batched,
            )
            self.pool.add(engine)
            if engine.set_id:
                self.ledger.record(f"engine:{set_id}", engine.pid)
                if ident.get("nanny_pid"):  # its own session: stopping the engine's group misses it
                    self.ledger.record(f"nanny:{set_id}", int(ident["nanny_pid"]))
            t0 = time.monotonic()
            ident = await within(
                asyncio.wrap_future(self.cluster.apply(eid, runtime.init_engine, config)),
                self.settings.engine_start_timeout_s,
            )
        except Exception as exc:  # a broken engine must not stop the supervisor
            log.error("engine %s failed to initialise: %s", eid, exc)
            engine = self.pool.get(eid)
            if engine is not None:
                await self.kill_and_replace(engine, "init_failed")
            return
        if engine.state is not EngineState.STARTING:
            return
        engine.backend = ident.get("backend") or {}
        engine.rss_mb = ident.get("rss_mb", 0.0)
        log.info("%s loaded in %.2fs (%s)", engine.tag(), time.monotonic() - t0, engine.backend.get("backend"))
        if engine.backend.get("tiny_random_model"):
            log.warning("%s serves the tiny local model %s: RANDOM weights, its text is random (name a model "
                        "with --model)", engine.tag(), engine.backend.get("model"))
        if engine.batched:
            self._start_serving(engine)  # ready when its loop says hello
        else:
            self.mark_ready(engine)

    def mark_ready(self, engine: Engine) -> None:
        if engine.state is EngineState.STARTING:
            engine.state = EngineState.IDLE
            engine.last_beat = time.monotonic()
            self.on_ready(engine)

    def _start_serving(self, engine: Engine) -> None:
        assert self.control is not None
        config = {"identity": engine.id, "control_address": self.control.address,
                  "test_hooks": self.settings.engine_test_hooks}
        engine.serving = asyncio.wrap_future(self.cluster.apply(engine.id, batch.serve, config))
        engine.serving.add_done_callback(lambda fut, engine=engine: self._serving_ended(engine, fut))

    def _serving_ended(self, engine: Engine, fut: asyncio.Future) -> None:
        why = "serving loop returned" if not fut.cancelled() and fut.exception() is None else (
            f"serving loop failed: {fut.exception() if not fut.cancelled() else 'cancelled'}")
        if engine.state not in (EngineState.RESTARTING, EngineState.DEAD) and not self._stopping:
            self._spawn(self.handle_lost(engine, why))

    def _gpu_for(self, ident: dict[str, Any], set_id: str) -> str:
        if set_id in self._set_gpu:
            return self._set_gpu[set_id]
        if ident.get("gpu"):
            return str(ident["gpu"])  # pinned by whoever started it
        rank = sum(1 for e in self.pool.engines.values() if e.host_key == ident["host_key"])
        try:
            return placement.devices_for_rank(rank, 0, self.settings.gpus_per_engine)
        except ValueError:
            return ""

    async def handle_lost(self, engine: Engine, reason: str) -> None:
        if engine.state in (EngineState.RESTARTING, EngineState.DEAD):
            return
        log.warning("%s lost: %s", engine.tag(), reason)
        engine.state = EngineState.DEAD
        self.on_lost(engine, reason, False)
        await self._replace(engine, "lost")

    # kill, replace, recycle ----------------------------------------------------
    def is_local(self, engine: Engine) -> bool:
        return engine.host_key == self.local_key

    async def kill_and_replace(self, engine: Engine, reason: str) -> None:
        """SIGKILL the engine's process group (its task's children die too) and replace it."""
        if engine.state is EngineState.DEAD:
            return
        engine.state = EngineState.RESTARTING
        if self.is_local(engine):
            kill_group(engine.pid)
        else:
            try:
                await within(asyncio.wrap_future(self.cluster.send_signal(engine.id, signal.SIGKILL)), 10)
            except Exception as exc:  # remote kill failed: the heartbeat will find it
                log.error("%s remote SIGKILL failed: %s", engine.tag(), exc)
        self.on_lost(engine, f"engine killed ({reason})", True)
        await self._replace(engine, reason)

    async def recycle(self, engine: Engine, reason: str) -> None:
        """Release the backend, stop the engine, start a fresh one on the same devices."""
        engine.state = EngineState.RESTARTING
        log.info("%s recycling: %s", engine.tag(), reason)
        await self._release(engine)
        await self._replace(engine, reason)

    async def _release(self, engine: Engine, timeout: float = 30) -> None:
        if engine.serving is not None and not engine.serving.done() and self.control is not None:
            self.control.send(engine.id, {"op": "stop"})  # the serving loop answers what it holds, then returns
            try:
                await within(asyncio.shield(engine.serving), timeout)
            except Exception as exc:  # release below still runs; stop kills if it must
                log.warning("%s serving loop did not stop: %s", engine.tag(), exc)
        try:
            await within(asyncio.wrap_future(self.cluster.apply(engine.id, runtime.release_engine)), timeout)
        except Exception as exc:  # the stop below still runs; kill if it must
            log.warning("%s release failed: %s", engine.tag(), exc)

    async def _replace(self, engine: Engine, reason: str) -> None:
        """Start the replacement at once, while the old engine set is cleaned up."""
        self.metrics.engine_restarts.labels(reason).inc()
        engine.state = EngineState.DEAD
        if engine.set_id and self.is_local(engine):
            kill_group(engine.pid)  # never leave it running beside its replacement
        self.pool.remove(engine.id)
        steps = []
        if engine.set_id:
            steps.append(self._stop_set(engine.set_id))
        if self.cluster.local and not self._stopping:
            steps.append(self.launch(self._set_gpu.pop(engine.set_id, engine.gpu)))
        elif not self.cluster.local:
            log.warning("%s gone from a joined cluster: its launcher must replace it", engine.tag())
        await asyncio.gather(*steps)

    async def _stop_set(self, set_id: str) -> None:
        await self.cluster.stop_engine_set(set_id)
        self.ledger.kill(f"nanny:{set_id}")  # a nanny can hang in zmq term after its engine died

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self, busy_ids: set[int] | frozenset[int] = frozenset()) -> None:
        """Release every idle engine's backend, then stop them all; engines that were running jobs
        (``busy_ids``: those jobs are already back in the queue) are killed, not waited for."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        busy = [e for e in self.pool if e.id in busy_ids or e.jobs or e.state is not EngineState.IDLE]
        idle = [e for e in self.pool if e not in busy]
        for engine in busy:
            if self.is_local(engine) and engine.set_id:
                kill_group(engine.pid)
        await asyncio.gather(*(self._release(e, timeout=15) for e in idle))
        if idle and self.cluster.local:
            await self.cluster.shutdown_engines([e.id for e in idle])
        for engine in self.pool:
            engine.state = EngineState.DEAD


def default_slots(backend: str) -> int:
    """Jobs at once per engine when not set: vLLM fills a batch, the others run one job at a time."""
    return 32 if backend == "vllm" else 1
