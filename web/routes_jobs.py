"""The native jobs API: submit, get, list, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from supervisor.jobs import JobStatus
from supervisor.requests import JobRequest
from web.deps import SupervisorDep
from web.schemas import ErrorOut, JobCreate, JobList, JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}}


@router.post("", status_code=202, response_model=JobOut, responses={**ERRORS, 429: {"model": ErrorOut}})
async def submit_job(body: JobCreate, sup: SupervisorDep, response: Response) -> JobOut:
    extra = {k: v for k, v in (("top_p", body.top_p), ("top_k", body.top_k), ("seed", body.seed)) if v is not None}
    submitted = sup.submit(
        JobRequest(
            prompt=body.prompt, max_tokens=body.max_tokens, temperature=body.temperature, stop=tuple(body.stop or ()),
            deadline_s=body.deadline_s, queue_timeout_s=body.queue_timeout_s, priority=body.priority,
            idempotency_key=body.idempotency_key, extra=extra,
        )
    )
    response.headers["Location"] = f"/v1/jobs/{submitted.job.id}"
    if not submitted.created:
        response.headers["Idempotent-Replayed"] = "true"
    return JobOut.of(submitted.job)


@router.get("", response_model=JobList, responses=ERRORS)
async def list_jobs(
    sup: SupervisorDep,
    status: Annotated[list[JobStatus] | None, Query(description="filter by status (repeatable)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JobList:
    jobs = sup.list(status or None, limit=limit, offset=offset)
    return JobList(jobs=[JobOut.of(j) for j in jobs], count=len(jobs))


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS)
async def get_job(job_id: str, sup: SupervisorDep) -> JobOut:
    return JobOut.of(sup.get(job_id))


@router.post("/{job_id}/cancel", response_model=JobOut, status_code=202, responses=ERRORS)
async def cancel_job(job_id: str, sup: SupervisorDep) -> JobOut:
    """Cancel: a queued job ends at once; a running one is interrupted (202: poll for the final status)."""
    return JobOut.of(sup.cancel(job_id))
