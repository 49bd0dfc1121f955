"""``GET /v1/events``: one live feed of every job and engine, for dashboards (Server-Sent Events).

- ``event: snapshot``: ``{"jobs": [summary], "engines": [...] | null, "starting": [...], "counts": {...}}`` first;
- ``event: job``: a job summary on each status change, and at most every ``flush_s`` while it streams tokens
  (``output_tail`` = the last characters of its output);
- ``event: engines``: ``{"engines", "starting", "hosts", "counts"}`` every ``engines_every_s`` (``busy_s`` = how
  long the current job has run, ``deadline_s`` = its deadline; ``hosts`` as ``/admin/hosts`` lists them, without
  their engine lists).

With API keys on, a key user sees only their own jobs and no engines; the admin token (or keys off) sees all.
Each stream takes a slot of ``sse_max_per_owner`` / ``sse_max_total`` (429 when none is left). Snapshots are
read off the event loop and the status counts are shared by all subscribers (``web/listing.py``). The job behind
a status change is read and rendered once for all subscribers (:class:`SharedStatusReads`; the hub hands every
subscriber the same event), and the events queued for a subscriber go out in one write: with 32 subscribers the
per-subscriber store reads and per-event writes were most of the server's time (``bench/bench_soak.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.core.requests import JobNotFound
from llmsup.supervisor.port import ControlPlane
from llmsup.web import sse
from llmsup.web.auth import Principal, PrincipalDep
from llmsup.web.deps import SupervisorDep
from llmsup.web.listing import SharedCounts, list_jobs
from llmsup.web.routes_admin import engine_list
from llmsup.web.schemas import errors, iso

router = APIRouter(tags=["jobs"])
FLUSH_S = 0.25
BATCH = 256  # events handled, and sent in one write, per wake-up of a feed


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


def _engines(sup: ControlPlane, principal: Principal, counts: SharedCounts) -> dict[str, Any]:
    if not principal.sees_all:
        return {"engines": None, "starting": [], "counts": None}
    data = engine_list(sup).model_dump(mode="json")
    return {**data, "hosts": sup.host_views(), "counts": counts.get(sup)}


def shared_counts(request: Request) -> SharedCounts:
    state = request.app.state
    if getattr(state, "live_counts", None) is None:
        state.live_counts = SharedCounts()
    counts: SharedCounts = state.live_counts  # Starlette's app state holds untyped attributes
    return counts


class SharedStatusReads:
    """The job behind a status event, read from the store and rendered as a ``job`` message once for every
    subscriber: the hub hands each subscriber the same event object, so the object itself is the key (kept
    referenced while cached, so its id cannot be reused). Bounded: the oldest of ``size`` entries go first."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: OrderedDict[int, tuple[dict[str, Any], Job | None, bytes]] = OrderedDict()
        self.reads = 0  # store reads made (tests)

    def get(self, sup: ControlPlane, ev: dict[str, Any]) -> tuple[Job | None, bytes]:
        hit = self._entries.get(id(ev))
        if hit is not None and hit[0] is ev:
            return hit[1], hit[2]
        self.reads += 1
        try:
            job: Job | None = sup.get(ev["job_id"])
        except JobNotFound:
            job = None
        rendered = sse.event(summary(job), "job") if job is not None else b""
        self._entries[id(ev)] = (ev, job, rendered)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return job, rendered


def shared_reads(request: Request) -> SharedStatusReads:
    state = request.app.state
    if getattr(state, "live_reads", None) is None:
        state.live_reads = SharedStatusReads()
    reads: SharedStatusReads = state.live_reads  # Starlette's app state holds untyped attributes
    return reads


def stream_slot(request: Request, principal: Principal) -> Callable[[], None] | None:
    """Take an event stream slot for this caller (429 when none is left); None when the app keeps no count."""
    slots = getattr(request.app.state, "stream_slots", None)
    return slots.acquire(principal.owner, principal.admin) if slots is not None else None


@router.get(
    "/v1/events",
    response_class=sse.EventStream,
    responses={200: sse.sse_response("SSE stream (never ends by itself)", ["snapshot", "job", "engines"]),
               **errors(401, 422, 429, stream=True)},
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
    feed = _feed(sup, principal, jobs, engines_every_s, shared_counts(request), shared_reads(request))
    return sse.EventStream(feed, gauge=web_metrics.sse_streams if web_metrics else None,
                           release=stream_slot(request, principal))


async def _feed(sup: ControlPlane, principal: Principal, n_jobs: int, every_s: float,  # noqa: C901 - the dashboard feed's one loop (snapshot, changes, engines, pings)
                counts: SharedCounts, reads: SharedStatusReads) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    owners: dict[str, str | None] = {}

    def mine(job_id: str) -> Job | None:
        try:
            job = sup.get(job_id)
        except JobNotFound:
            return None
        owners[job_id] = job.owner
        return job if principal.can_see(job) else None

    async def snapshot() -> bytes:
        jobs = await list_jobs(sup, None, owner=principal.owner, limit=n_jobs) if n_jobs else []
        return sse.event({"jobs": [summary(j) for j in jobs], **_engines(sup, principal, counts)}, "snapshot")

    sub = sup.subscribe(None)
    try:
        yield await snapshot()
        dirty: set[str] = set()
        next_flush = next_tick = loop.time() + every_s
        while True:
            wake = min(next_tick, next_flush if dirty else next_tick)
            try:
                async with asyncio.timeout_at(wake):  # (wait_for can swallow a cancel in Python 3.11)
                    first = await sub.get()
                batch = [first, *sub.ready(BATCH - 1)]
            except TimeoutError:
                batch = []
            out: list[bytes] = []
            for ev in batch:
                if ev is None:
                    break
                if ev["type"] == "status":
                    dirty.discard(ev["job_id"])
                    job, rendered = reads.get(sup, ev)
                    if job is not None:
                        owners[job.id] = job.owner
                        if principal.can_see(job):
                            out.append(rendered)
                elif ev["type"] == "token":
                    jid = ev["job_id"]
                    if principal.sees_all or owners.get(jid, principal.owner) == principal.owner:
                        if not dirty:
                            next_flush = loop.time() + FLUSH_S
                        dirty.add(jid)
            if None in batch:
                if out:
                    yield b"".join(out)
                if not sub.overflowed:
                    return  # the supervisor is stopping
                sub.close()  # fell behind: start over from a fresh snapshot
                sub = sup.subscribe(None)
                dirty.clear()
                yield await snapshot()
                continue
            now = loop.time()
            if dirty and now >= next_flush:
                for jid in list(dirty):
                    job = mine(jid)
                    if job is not None and job.status is JobStatus.RUNNING:
                        out.append(sse.event(summary(job), "job"))
                dirty.clear()
            if now >= next_tick:
                next_tick = now + every_s
                out.append(sse.event(_engines(sup, principal, counts), "engines") if principal.sees_all else sse.PING)
            if out:
                yield b"".join(out)
            if len(owners) > 50_000:
                owners.clear()
    finally:
        sub.close()
