"""The native jobs API: submit, get, list, cancel, and a job's live events (SSE)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response

from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.web import listing, sse
from llmsup.web.auth import Principal, PrincipalDep, visible
from llmsup.web.deps import SupervisorDep
from llmsup.web.follow import Update, follow
from llmsup.web.limits import check_job_limits, check_priority
from llmsup.web.live import stream_slot
from llmsup.web.schemas import JobCreate, JobList, JobOut, errors

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
AUTH = (401,)
LIST_LIMIT_MAX = 1000  # jobs per page: each carries its prompt (up to max_prompt_chars)


def job_out(job: Job, principal: Principal) -> JobOut:
    out = JobOut.of(job)
    if principal.admin:  # engine tracebacks show code paths and data: admins only
        out.error_detail = job.error_detail
    return out


@router.post("", status_code=202, response_model=JobOut, responses=errors(*AUTH, 403, 404, 409, 413, 422, 429))
async def submit_job(body: JobCreate, sup: SupervisorDep, principal: PrincipalDep, response: Response) -> JobOut:
    """Queue a job. ``priority`` above ``max_user_priority`` needs the admin token (403). ``idempotency_key``: the
    same key from the same owner returns the job it created (``Idempotent-Replayed: true``)."""
    check_job_limits(sup.settings, body.prompt, body.max_tokens, body.deadline_s, body.min_tokens)
    check_priority(sup.settings, body.priority, principal.admin)
    extra = {k: getattr(body, k) for k in ("top_p", "top_k", "seed", "ignore_eos", "min_tokens")
             if getattr(body, k) is not None}
    submitted = sup.submit(
        JobRequest(
            prompt=body.prompt, max_tokens=body.max_tokens, temperature=body.temperature, stop=tuple(body.stop or ()),
            deadline_s=body.deadline_s, queue_timeout_s=body.queue_timeout_s, priority=body.priority,
            idempotency_key=body.idempotency_key, owner=principal.job_owner, extra=extra, pool=body.pool,
        )
    )
    if not submitted.created:
        if not principal.can_see(submitted.job):  # keys are per owner in the store: a second line of defence
            raise HTTPException(409, "idempotency_key is taken: use another key")
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{submitted.job.id}"
    await sup.committed()  # a 202 promises the job is stored
    return job_out(submitted.job, principal)


@router.get("", response_model=JobList, responses=errors(*AUTH, 422))
async def list_jobs(
    sup: SupervisorDep,
    principal: PrincipalDep,
    status: Annotated[list[JobStatus] | None, Query(description="filter by status (repeatable)")] = None,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Response:
    """Jobs newest first (yours, with API keys on). Read, parsed and rendered off the event loop."""
    jobs = await listing.list_jobs(sup, status or None, owner=principal.owner, limit=limit, offset=offset)

    def render() -> bytes:  # the JobList schema, rendered job by job
        return listing.render_page((job_out(j, principal) for j in jobs), count=len(jobs))

    return Response(await listing.off_loop(render), media_type="application/json")


@router.get("/{job_id}", response_model=JobOut, responses=errors(*AUTH, 404, 422))
async def get_job(
    job_id: str,
    sup: SupervisorDep,
    principal: PrincipalDep,
    wait_s: Annotated[float, Query(ge=0, le=60, description="long-poll: answer when the job ends, or after this")] = 0,
) -> JobOut:
    job = visible(sup.get(job_id), principal)
    if wait_s > 0 and not job.status.terminal:
        try:
            job = await sup.wait(job_id, wait_s)
        except TimeoutError:
            job = sup.get(job_id)
    return job_out(job, principal)


@router.post("/{job_id}/cancel", response_model=JobOut, status_code=202, responses=errors(*AUTH, 404, 422))
async def cancel_job(job_id: str, sup: SupervisorDep, principal: PrincipalDep) -> JobOut:
    """Cancel: a queued job ends at once; a running one is interrupted (202: poll for the final status)."""
    visible(sup.get(job_id), principal)
    job = sup.cancel(job_id)
    await sup.committed()
    return job_out(job, principal)


@router.get(
    "/{job_id}/events",
    response_class=sse.EventStream,
    responses={200: sse.sse_response("SSE stream of the job", ["job", "status", "token", "end"]),
               **errors(*AUTH, 404, 422, 429, stream=True)},
)
async def job_events(
    job_id: str,
    request: Request,
    sup: SupervisorDep,
    principal: PrincipalDep,
    cancel_on_disconnect: Annotated[bool, Query(description="cancel the job if this client goes away first")] = False,
) -> sse.EventStream:
    """Server-Sent Events of one job, in order, ending when the job is terminal.

    - ``event: job``: the whole job (JSON as ``GET /v1/jobs/{id}``), first, and again if the stream resynchronises;
    - ``event: status``: ``{"job_id", "status", "attempts", "tokens"}`` on every status change (``queued`` again or
      ``running`` again means a new attempt, whose tokens restart at seq 0);
    - ``event: token`` (``id:`` = seq): ``{"job_id", "seq", "text"}``;
    - ``event: end``: the terminal job; its ``output`` is authoritative (the last tokens may not be streamed).

    Comment lines (``: ping``) keep idle connections alive.
    """
    visible(sup.get(job_id), principal)  # 404 before the stream starts
    updates = follow(sup, job_id, sup.settings.sse_ping_s)

    def on_close(completed: bool) -> None:
        if cancel_on_disconnect and not completed and not sup.get(job_id).status.terminal:
            sup.cancel(job_id, note="cancelled: its event stream was closed")

    return sse.EventStream(_job_events(updates, job_id, principal), on_close=on_close, gauge=_gauge(request),
                           release=stream_slot(request, principal))


async def _job_events(updates: AsyncIterator[Update], job_id: str, principal: Principal) -> AsyncIterator[bytes]:
    async for u in updates:
        if u.kind == "ping":
            yield sse.PING
        elif u.kind == "token":
            yield sse.event({"job_id": job_id, "seq": u.seq, "text": u.text}, "token", u.seq)
        elif u.job is not None and u.status is not None:  # "job" and "status" updates carry both
            if u.kind == "job":
                yield sse.event(job_out(u.job, principal).model_dump(mode="json"), "job")
            else:
                yield sse.event({"job_id": job_id, "status": u.status.value, "attempts": u.job.attempts,
                                 "tokens": u.job.tokens}, "status")
            if u.status.terminal:
                yield sse.event(job_out(u.job, principal).model_dump(mode="json"), "end")


def _gauge(request: Request):  # type: ignore[no-untyped-def]
    web_metrics = getattr(request.app.state, "web_metrics", None)
    return web_metrics.sse_streams if web_metrics is not None else None
