"""How an engine's answer (or silence) becomes a job's final status: pure functions."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmsup.engines.messages import JobResult, ProtocolError, decode_for_supervisor
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.reports import TaskFailure
from llmsup.supervisor.core.running import RunningJob

Q = JobStatus.QUEUED


@dataclass(frozen=True)
class Settlement:
    status: JobStatus  # QUEUED means: back to the queue
    text: str = ""
    tokens: int = 0
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    requeue_reason: str | None = None
    charge_attempt: bool = True  # False: the retry does not count against max_attempts
    engine_lost: bool = False  # the engine is gone: replace it
    error_detail: str | None = None  # for admins: the engine-side traceback of a failure
    extras: dict[str, tuple] = field(default_factory=dict)  # logprobs / token ids the job asked for (Job fields)


def note(run: RunningJob, reason: JobStatus) -> str:
    if reason is JobStatus.TIMED_OUT:
        how = "engine killed" if run.killed else "interrupted"
        if run.stalled_s:
            return f"no token for {run.stalled_s:g}s: stopped as a runaway (stall limit, {how})"
        return f"deadline of {run.job.deadline_s}s passed ({how})"
    return run.cancel_note + (" (engine killed)" if run.killed else "")


def partial(run: RunningJob, reason: JobStatus, suffix: str = "") -> Settlement:
    """Settle with what the job streamed so far (its logprobs and token ids too, when it asked)."""
    return Settlement(reason, run.text, len(run.pieces), note(run, reason) + suffix, extras=run.streamed_extras())


def lost(run: RunningJob, why: str, max_attempts: int, charge: bool = True) -> Settlement:
    """The engine went away under the job: retry (elsewhere) or fail when out of attempts."""
    losses = len(run.job.lost_engines) + 1
    if (charge and run.job.attempts >= max_attempts) or losses > 2 * max_attempts:
        return Settlement(JobStatus.FAILED, run.text, len(run.pieces),
                          f"{why}; gave up after {run.job.attempts} attempts ({losses} engines lost)",
                          engine_lost=True)
    return Settlement(Q, requeue_reason=why, charge_attempt=charge, engine_lost=True)


def from_failure(failure: TaskFailure, run: RunningJob, max_attempts: int) -> Settlement:
    """A task that ended without a result: interrupted (partial output), its engine died (retry), or it raised."""
    reason = run.interrupt_reason or JobStatus.CANCELLED
    if failure.kind == "interrupted":
        return partial(run, reason)
    if failure.kind == "engine_died":
        if run.killed:
            return partial(run, reason)
        return lost(run, f"engine {run.engine.id} died: {failure.message}", max_attempts)
    if failure.kind == "unreachable":
        return lost(run, failure.message, max_attempts, charge=False)
    return Settlement(JobStatus.FAILED, run.text, len(run.pieces), failure.message, error_detail=failure.traceback)


def decode_reply(reply: object) -> JobResult:
    """The engine's answer as a typed result; one this build cannot read is an error result saying so."""
    if isinstance(reply, JobResult):  # batched engines: already decoded from the token stream
        return reply
    try:
        return decode_for_supervisor(reply, expect=(JobResult,))
    except ProtocolError as exc:
        return JobResult("error", error=f"unreadable result from the engine ({exc})")


def result_extras(result: JobResult) -> dict[str, tuple]:
    """The optional outputs of a completed job, as Job field -> value (only those it carries)."""
    names = ("logprobs", "prompt_logprobs", "token_ids", "prompt_token_ids", "pooled", "pooled_shape")
    return {name: getattr(result, name) for name in names if getattr(result, name)}


def from_result(result: JobResult, run: RunningJob, max_attempts: int) -> Settlement:
    text, tokens = result.text, result.tokens
    if result.outcome == "completed":
        return Settlement(JobStatus.SUCCEEDED, text, tokens, None, result.finish_reason, result.prompt_tokens,
                          extras=result_extras(result))
    if result.outcome == "interrupted":
        if result.reason == "stopped":  # a batched engine was stopped under the job: run it again
            return Settlement(Q, requeue_reason="engine stopped", charge_attempt=False)
        extras = result_extras(result)  # a batched engine keeps the logprobs of what it made before the stop
        if result.reason == "deadline":
            return Settlement(JobStatus.TIMED_OUT, text, tokens, note(run, JobStatus.TIMED_OUT), extras=extras)
        if run.interrupt_reason is None:
            return Settlement(JobStatus.CANCELLED, text, tokens, "interrupted from outside the supervisor",
                              extras=extras)
        return Settlement(run.interrupt_reason, text, tokens, note(run, run.interrupt_reason), extras=extras)
    if result.transient and run.job.attempts < max_attempts:
        return Settlement(Q, requeue_reason=f"transient error: {result.error}", engine_lost=result.engine_dead)
    return Settlement(JobStatus.FAILED, text, tokens, result.error, error_detail=result.traceback)
