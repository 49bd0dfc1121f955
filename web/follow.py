"""Follow one job live: its state, then its status changes and tokens in the order they happened.

The subscription to the supervisor's event hub is taken *before* the job is read, with no ``await`` in
between, so no event can fall between the snapshot and the stream. Status changes and tokens (each with its id
and logprob record when the job asked for them; a running job's snapshot holds those streamed so far) are passed
on in hub order; the stream ends with the job's terminal status change. A new attempt (after an engine was
lost) restarts the output at token seq 0. A consumer that fell too far behind gets a fresh snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from llmsup.engines.protocol import TokenLogprob
from llmsup.supervisor.client.events import TextTracker
from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.port import ControlPlane


@dataclass(frozen=True)
class Update:
    kind: Literal["job", "status", "token", "ping"]
    job: Job | None = None  # "job", "status": the job as stored now (output so far included)
    status: JobStatus | None = None  # "job", "status": the status this update is about
    seq: int = 0  # "token": index of the token within the current attempt
    text: str = ""
    token_id: int | None = None  # "token": its id, when the job asked for token ids
    logprob: TokenLogprob | None = None  # "token": its logprob record, when the job asked for logprobs


async def follow(sup: ControlPlane, job_id: str, ping_s: float = 15.0) -> AsyncIterator[Update]:
    """Yield a ``job`` snapshot, then ``status`` / ``token`` updates (and ``ping`` while nothing happens) until
    a terminal ``status``; raises JobNotFound before yielding anything."""
    sub = sup.subscribe(job_id)
    try:
        job, next_seq = _snapshot(sup, job_id)  # no await since subscribing: nothing is missed
        yield Update("job", job, job.status)
        if job.status.terminal:
            return
        while True:
            try:
                async with asyncio.timeout(ping_s):  # (wait_for can swallow a cancel in Python 3.11)
                    ev = await sub.get()
            except TimeoutError:
                yield Update("ping")
                continue
            if ev is None:
                if not sub.overflowed:
                    return  # the supervisor is stopping
                sub.close()  # fell behind: start over from a fresh snapshot
                sub = sup.subscribe(job_id)
                job, next_seq = _snapshot(sup, job_id)
                update = Update("job", job, job.status)
            elif ev["type"] == "token":
                if ev["seq"] != next_seq:
                    continue
                next_seq += 1
                update = Update("token", seq=ev["seq"], text=ev["text"], token_id=ev.get("token_id"),
                                logprob=ev.get("logprob"))
            elif ev["type"] == "status":
                next_seq = 0  # queued again, or a new attempt started: its tokens count from 0
                update = Update("status", sup.get(job_id), JobStatus(ev["status"]))
            else:
                continue
            yield update
            if update.status is not None and update.status.terminal:
                return
    finally:
        sub.close()


def _snapshot(sup: ControlPlane, job_id: str) -> tuple[Job, int]:
    """The job as stored now, and the seq of the next token expected (tokens streamed so far, if running)."""
    job = sup.get(job_id)
    return job, (job.tokens if job.status is JobStatus.RUNNING else 0)


def new_text(tracker: TextTracker, u: Update) -> str:
    """The text an update adds to what a client was sent (the client's own rules for retries: ``TextTracker``).
    The terminal job's output is authoritative (the engine's result can arrive before its last streamed tokens)."""
    if u.kind == "token":
        return tracker.token(u.seq, u.text) or ""  # follow() passes tokens in order: no gap reaches here
    if u.job is None or u.status is None:
        return ""
    if u.kind == "job" or u.status.terminal:
        job = u.job
        return tracker.snapshot(job.status.value, job.output, job.tokens, job.attempts)
    tracker.status(u.status.value, u.job.attempts)  # queued again, or a new attempt: its text starts empty
    return ""
