"""The escalation ladder: SIGINT, then a no-op probe, then SIGKILL and a new engine.

1. SIGINT to the engine running the job: ``os.kill`` for engines on this host
   (delivery is immediate even when the CPUs are saturated), else
   ``Client.send_signal`` through the controller and the engine's nanny.
   One SIGINT per job, sent only while its task is pending; the engine takes
   nothing new until the job is settled, so a late SIGINT cannot hit the next job.
2. No reply within ``interrupt_grace_s``: a no-op probe to the same engine.
   Tasks on one engine run in order, so a probe that returns while the job is
   still pending proves the reply was lost (IPyParallel's race): the job is
   settled with what it streamed and the engine is reused.
3. Neither within ``kill_grace_s`` of the SIGINT: the engine is stuck where
   SIGINT cannot reach; SIGKILL its process group and start a replacement.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable

from llmsup.engines import runtime
from llmsup.supervisor.aio import within
from llmsup.supervisor.cluster import ClusterManager
from llmsup.supervisor.jobs import JobStatus
from llmsup.supervisor.metrics import Metrics
from llmsup.supervisor.pool import Engine, EngineState
from llmsup.supervisor.running import RunningJob
from llmsup.supervisor.settings import Settings
from llmsup.supervisor.signals import interrupt_main_thread

log = logging.getLogger("llmsup.watchdog")

SettleLost = Callable[[RunningJob], None]
KillEngine = Callable[[Engine, str], Awaitable[None]]
SendAbort = Callable[[RunningJob], None]


class Watchdog:
    def __init__(
        self,
        settings: Settings,
        cluster: ClusterManager,
        metrics: Metrics,
        settle_lost_reply: SettleLost,
        kill_engine: KillEngine,
        local_host_key: str,
        send_abort: SendAbort,
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self.metrics = metrics
        self.settle_lost_reply = settle_lost_reply
        self.kill_engine = kill_engine
        self.local_host_key = local_host_key
        self.send_abort = send_abort

    def interrupt(self, run: RunningJob, reason: JobStatus) -> bool:
        """Start the ladder for this job; False if it is settled or already being interrupted."""
        if run.settled.is_set() or run.interrupt_reason is not None:
            return False
        run.interrupt_reason = reason
        run.interrupt_mono = time.monotonic()
        if run.engine.batched:
            run.escalation = asyncio.ensure_future(self._batched_ladder(run))
            return True
        if run.engine.state in (EngineState.IDLE, EngineState.BUSY, EngineState.DRAINING):
            run.engine.state = EngineState.INTERRUPTING
        run.escalation = asyncio.ensure_future(self._ladder(run))
        return True

    def _log(self, run: RunningJob, step: str, detail: str = "") -> None:
        elapsed = time.monotonic() - (run.interrupt_mono or time.monotonic())
        log.warning(
            "job=%s %s step=%s reason=%s elapsed=%.3fs %s",
            run.job.id, run.engine.tag(), step, run.interrupt_reason.value if run.interrupt_reason else "-",
            elapsed, detail,
        )
        self.metrics.interrupts.labels(step).inc()

    def uses_direct_signal(self, engine: Engine) -> bool:
        return self.settings.signal_path != "ipp" and engine.host_key == self.local_host_key

    async def _sigint(self, run: RunningJob) -> None:
        engine = run.engine
        if self.uses_direct_signal(engine):
            try:
                interrupt_main_thread(engine.pid)
            except ProcessLookupError:
                pass
            self._log(run, "sigint", "path=direct")
            return
        self._log(run, "sigint", "path=ipp")
        try:
            # Wait for the nanny's answer: the signal has then been delivered, so it
            # cannot arrive late, after the engine has moved on to another job.
            await within(
                asyncio.wrap_future(self.cluster.send_signal(engine.id, signal.SIGINT)),
                self.settings.kill_grace_s,
            )
        except Exception as exc:  # the probe and SIGKILL steps follow regardless
            log.warning("job=%s %s send_signal failed: %s", run.job.id, engine.tag(), exc)

    async def _ladder(self, run: RunningJob) -> None:
        settings = self.settings
        if not run.task_started.is_set():
            # A SIGINT that reaches an engine before the task starts is swallowed by the idle kernel
            # (docs/measured.md 1.4: 4 of 30): wait until the engine says it runs the job (an overloaded engine
            # may still be reading it), then interrupt.
            await _wait_any(run.task_started, run.settled, settings.kill_grace_s)
            if run.settled.is_set():
                return
        t0 = time.monotonic()
        if run.future is not None and run.future.done():
            return  # the reply is already in: nothing to interrupt
        await self._sigint(run)
        if await _wait(run.settled, settings.interrupt_grace_s - (time.monotonic() - t0)):
            return
        self._log(run, "probe")
        probe = asyncio.wrap_future(self.cluster.apply(run.engine.id, runtime.ping))
        settled = asyncio.ensure_future(run.settled.wait())
        remaining = settings.kill_grace_s - (time.monotonic() - t0)
        done, _ = await asyncio.wait({probe, settled}, timeout=max(0.0, remaining), return_when=asyncio.FIRST_COMPLETED)
        settled.cancel()
        if run.settled.is_set():
            return
        if probe in done and probe.exception() is None:
            self._log(run, "lost_reply", "probe answered while the job's reply never came")
            self.settle_lost_reply(run)
            return
        probe.add_done_callback(_consume)
        self._log(run, "sigkill", f"no reply or probe within {settings.kill_grace_s}s")
        run.killed = True
        await self.kill_engine(run.engine, "sigint_failed")

    async def _batched_ladder(self, run: RunningJob) -> None:
        """A job on a batched engine: the engine settles it itself (its own deadline, or an abort
        message); SIGINT if it has not within ``interrupt_grace_s``; SIGKILL at ``kill_grace_s``."""
        settings, engine = self.settings, run.engine
        t0 = time.monotonic()
        if run.interrupt_reason is JobStatus.CANCELLED:
            self.send_abort(run)
        if await _wait(run.settled, settings.interrupt_grace_s):
            return
        if engine.sigint_at is None or t0 - engine.sigint_at > settings.kill_grace_s:
            engine.sigint_at = time.monotonic()  # one SIGINT per episode, whatever the number of due jobs
            await self._sigint(run)
        if await _wait(run.settled, settings.kill_grace_s - (time.monotonic() - t0)):
            return
        self._log(run, "sigkill", f"batched engine did not settle the job within {settings.kill_grace_s}s")
        run.killed = True
        await self.kill_engine(engine, "sigint_failed")


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


async def _wait_any(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    waits = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waits, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    if event.is_set():
        return True
    try:
        await within(event.wait(), max(0.0, timeout))
        return True
    except TimeoutError:
        return False
