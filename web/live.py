"""``GET /v1/events``: one live feed of every job and engine, for dashboards (Server-Sent Events).

- ``event: snapshot``: ``{"jobs": [summary], "engines": [...] | null, "starting": [...], "counts": {...}}`` first;
- ``event: job``: a job summary on each status change, and at most every ``flush_s`` while it streams tokens
  (``output_tail`` = the last characters of its output);
- ``event: engines``: ``{"engines", "starting", "counts"}`` every ``engines_every_s`` (``busy_s`` = how long the
  current job has run, ``deadline_s`` = its deadline).

With API keys on, a key user sees only their own jobs and no engines; the admin token (or keys off) sees all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from llmsup.supervisor.events import Subscription
from llmsup.supervisor.jobs import Job, JobStatus
from llmsup.supervisor.requests import JobNotFound
from llmsup.supervisor.service import Supervisor
from llmsup.web import sse
from llmsup.web.auth import Principal, PrincipalDep
from llmsup.web.deps import SupervisorDep
from llmsup.web.routes_admin import engine_list
from llmsup.web.schemas import errors, iso

router = APIRouter(tags=["jobs"])
FLUSH_S = 0.25


def summary(job: Job, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    running_s = None
    if job.started_at:
        running_s = round((job.finished_at or now) - job.started_at, 3)
    return {
        "id": job.id, "status": job.status.value, "prompt": job.prompt[:160], "output_tail": job.output[-240:],
        "tokens": job.tokens, "attempts": job.attempts, "engine": job.engine.id if job.engine else None,
        "deadline_s": job.deadline_s, "running_s": running_s, "priority": job.priority, "error": job.error,
        "finish_reason": job.finish_reason, "owner": job.owner, "created_at": iso(job.created_at),
        "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
    }


def _engines(sup: Supervisor, principal: Principal) -> dict[str, Any]:
    counts = {s.value: n for s, n in sup.store.counts().items()} if principal.sees_all else None
    if not principal.sees_all:
        return {"engines": None, "starting": [], "counts": counts}
    data = engine_list(sup).model_dump(mode="json")
    return {**data, "counts": counts}


@router.get(
    "/v1/events",
    response_class=sse.EventStream,
    responses={200: sse.sse_response("SSE stream (never ends by itself)", ["snapshot", "job", "engines"]),
               **errors(401, 422, stream=True)},
)
async def live_events(
    request: Request,
    sup: SupervisorDep,
    principal: PrincipalDep,
    jobs: Annotated[int, Query(ge=0, le=1000, description="latest jobs in the first snapshot")] = 100,
    engines_every_s: Annotated[float, Query(ge=0.1, le=60)] = 1.0,
) -> sse.EventStream:
    """Live feed of all jobs (yours, with API keys on) and engines: see the module docs for the events."""
    web_metrics = getattr(request.app.state, "web_metrics", None)
    return sse.EventStream(_feed(sup, principal, jobs, engines_every_s),
                           gauge=web_metrics.sse_streams if web_metrics else None)


class _FeedState:
    """What one client's feed has seen: the owners of jobs, and running jobs with tokens not yet summarised."""

    def __init__(self, sup: Supervisor, principal: Principal, n_jobs: int, every_s: float, now: float) -> None:
        self.sup, self.principal, self.n_jobs, self.every_s = sup, principal, n_jobs, every_s
        self.owners: dict[str, str | None] = {}
        self.dirty: set[str] = set()
        self.next_flush = self.next_tick = now + every_s

    def wake_at(self) -> float:
        return min(self.next_tick, self.next_flush) if self.dirty else self.next_tick

    def mine(self, job_id: str) -> Job | None:
        try:
            job = self.sup.get(job_id)
        except JobNotFound:
            return None
        self.owners[job_id] = job.owner
        return job if self.principal.can_see(job) else None

    def snapshot(self) -> bytes:
        self.dirty.clear()
        jobs = self.sup.list(None, owner=self.principal.owner, limit=self.n_jobs) if self.n_jobs else []
        return sse.event({"jobs": [summary(j) for j in jobs], **_engines(self.sup, self.principal)}, "snapshot")

    def on_event(self, ev: dict[str, Any], now: float) -> list[bytes]:
        """A status change is sent at once; a token only marks its job for the next flush."""
        jid = ev.get("job_id", "")
        if ev["type"] == "status":
            self.dirty.discard(jid)
            job = self.mine(jid)
            return [sse.event(summary(job), "job")] if job is not None else []
        if ev["type"] == "token" and (self.principal.sees_all or self.owners.get(jid, self.principal.owner)
                                      == self.principal.owner):
            if not self.dirty:
                self.next_flush = now + FLUSH_S
            self.dirty.add(jid)
        return []

    def due(self, now: float) -> list[bytes]:
        """Summaries of the running jobs that streamed since the last flush, and the engines on their tick."""
        out = []
        if self.dirty and now >= self.next_flush:
            out = [sse.event(summary(job), "job") for job in map(self.mine, list(self.dirty))
                   if job is not None and job.status is JobStatus.RUNNING]
            self.dirty.clear()
        if now >= self.next_tick:
            self.next_tick = now + self.every_s
            out.append(sse.event(_engines(self.sup, self.principal), "engines") if self.principal.sees_all else sse.PING)
        if len(self.owners) > 50_000:
            self.owners.clear()
        return out


async def _next_event(sub: Subscription, wake_at: float) -> dict[str, Any] | None:
    """The next hub event, a ``tick`` at ``wake_at``, or None when the subscription ended."""
    try:
        async with asyncio.timeout_at(wake_at):  # (wait_for can swallow a cancel in Python 3.11)
            ev: dict[str, Any] | None = await sub.get()
            return ev
    except TimeoutError:
        return {"type": "tick"}


async def _feed(sup: Supervisor, principal: Principal, n_jobs: int, every_s: float) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    state = _FeedState(sup, principal, n_jobs, every_s, loop.time())
    sub = sup.hub.subscribe(None)
    try:
        yield state.snapshot()
        while True:
            ev = await _next_event(sub, state.wake_at())
            if ev is None:
                if not sub.overflowed:
                    return  # the supervisor is stopping
                sub.close()  # fell behind: start over from a fresh snapshot
                sub = sup.hub.subscribe(None)
                yield state.snapshot()
                continue
            now = loop.time()
            for chunk in state.on_event(ev, now) + state.due(now):
                yield chunk
    finally:
        sub.close()
