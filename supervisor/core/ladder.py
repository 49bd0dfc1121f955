"""The escalation ladder as a pure state machine: time and events in, steps out.

For a job on a one-job engine:

1. SIGINT to the engine running the job, once the engine has said it runs it
   (a SIGINT that reaches an idle kernel is swallowed). The rung's clock
   starts when the signal is asked for; it counts as delivered when the
   driver reports it (at once on this host; the nanny's answer elsewhere, so a
   signal can never arrive after the engine moved on to the next job).
2. No reply ``interrupt_grace_s`` after the SIGINT: a no-op probe to the same
   engine. Tasks on one engine run in order, so a probe that answers while
   the job's reply is missing proves IPyParallel lost the reply: the job is
   settled with what it streamed and the engine reused.
3. Neither by ``kill_grace_s`` after the SIGINT: the engine is stuck where
   SIGINT cannot reach; SIGKILL its process group, replace it.

For a job on a batched engine the engine enforces deadlines itself and takes
abort messages; SIGINT (one per engine per episode) comes at
``interrupt_grace_s``, SIGKILL at ``kill_grace_s``.

Nothing here sleeps, signals or reads a clock: :func:`ask`, :func:`on_task_started`,
:func:`on_delivered` and :func:`due` return the next :class:`Step` s and the time
the ladder wants to be looked at again, and the supervisor core carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from llmsup.supervisor.core.jobs import JobStatus


class Rung(str, Enum):
    WAITING_START = "waiting_start"  # asked before the engine said it runs the job
    SIGNALLING = "signalling"  # SIGINT asked for, delivery not confirmed yet
    INTERRUPTED = "interrupted"  # SIGINT delivered; the reply has interrupt_grace_s to come
    PROBING = "probing"  # probe sent; the reply or the probe's answer has until kill_grace_s
    KILLED = "killed"  # SIGKILL asked for: the engine's end settles the job


class Step(str, Enum):
    ABORT = "abort"  # ask a batched engine to drop the request (cancel)
    SIGINT = "sigint"
    PROBE = "probe"
    SIGKILL = "sigkill"


@dataclass(frozen=True)
class Grace:
    interrupt_s: float
    kill_s: float


@dataclass(frozen=True)
class Escalation:
    reason: JobStatus  # TIMED_OUT or CANCELLED
    batched: bool
    asked_at: float  # monotonic
    rung: Rung
    since: float  # when the SIGINT was asked for (the base of both graces); asked_at before that
    wake_at: float  # when :func:`due` should be called next


Result = tuple[Escalation, list[Step]]


def ask(reason: JobStatus, batched: bool, task_started: bool, now: float, grace: Grace) -> Result:
    """A deadline passed or a cancel came: the ladder's first step."""
    if batched:
        steps = [Step.ABORT] if reason is JobStatus.CANCELLED else []
        return Escalation(reason, True, now, Rung.INTERRUPTED, now, now + grace.interrupt_s), steps
    if not task_started:
        return Escalation(reason, False, now, Rung.WAITING_START, now, now + grace.kill_s), []
    return _sigint(Escalation(reason, False, now, Rung.SIGNALLING, now, now), now, grace)


def _sigint(esc: Escalation, now: float, grace: Grace) -> Result:
    return replace(esc, rung=Rung.SIGNALLING, since=now, wake_at=now + grace.kill_s), [Step.SIGINT]


def on_task_started(esc: Escalation, now: float, grace: Grace) -> Result:
    if esc.rung is Rung.WAITING_START:
        return _sigint(esc, now, grace)
    return esc, []


def on_delivered(esc: Escalation, now: float, grace: Grace) -> Result:
    if esc.rung is Rung.SIGNALLING and not esc.batched:
        return replace(esc, rung=Rung.INTERRUPTED, wake_at=max(now, esc.since + grace.interrupt_s)), []
    return esc, []


def due(esc: Escalation, now: float, grace: Grace, engine_sigint_at: float | None = None) -> Result:
    """The ladder's next step once ``now`` has reached ``esc.wake_at`` (else nothing)."""
    if now < esc.wake_at or esc.rung is Rung.KILLED:
        return esc, []
    if esc.batched:
        if esc.rung is Rung.INTERRUPTED:  # the engine did not settle it itself
            episode = engine_sigint_at is not None and esc.since - engine_sigint_at <= grace.kill_s
            moved = replace(esc, rung=Rung.PROBING, wake_at=esc.since + grace.kill_s)
            return moved, [] if episode else [Step.SIGINT]
        return _kill(esc)
    if esc.rung is Rung.WAITING_START:  # the engine never said it started: interrupt anyway
        return _sigint(esc, now, grace)
    if esc.rung is Rung.INTERRUPTED:
        return replace(esc, rung=Rung.PROBING, wake_at=esc.since + grace.kill_s), [Step.PROBE]
    return _kill(esc)  # SIGNALLING or PROBING past kill_s


def _kill(esc: Escalation) -> Result:
    return replace(esc, rung=Rung.KILLED, wake_at=float("inf")), [Step.SIGKILL]
