"""``POST /v1/jobs:batch``: many jobs in one request, for offline work: one quota check, a 202 with their ids."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field

from llmsup.supervisor.core.requests import InvalidRequest, JobRequest
from llmsup.web.auth import PrincipalDep
from llmsup.web.deps import SupervisorDep
from llmsup.web.limits import check_job_limits, check_priority
from llmsup.web.schemas import JobCreate, JSONModel, errors

router = APIRouter(tags=["jobs"])
BATCH_MAX = 10_000  # jobs per request (the body's size is bounded by max_body_bytes too)


class JobBatchCreate(JSONModel):
    jobs: Annotated[list[JobCreate], Field(min_length=1, max_length=BATCH_MAX, description="the jobs, in order")]


class JobBatchOut(BaseModel):
    ids: list[str] = Field(description="the jobs' ids, in the order of the request")
    created: int = Field(description="how many are new (the others: a repeated idempotency key's job)")


def job_request(body: JobCreate, owner: str | None) -> JobRequest:
    extra = {k: getattr(body, k) for k in ("top_p", "top_k", "seed", "ignore_eos", "min_tokens")
             if getattr(body, k) is not None}
    return JobRequest(prompt=body.prompt, max_tokens=body.max_tokens, temperature=body.temperature,
                      stop=tuple(body.stop or ()), deadline_s=body.deadline_s, queue_timeout_s=body.queue_timeout_s,
                      priority=body.priority, idempotency_key=body.idempotency_key, owner=owner, extra=extra,
                      pool=body.pool)


@router.post("/v1/jobs:batch", status_code=202, response_model=JobBatchOut,
             responses=errors(401, 403, 404, 413, 422, 429))
async def submit_batch(body: JobBatchCreate, sup: SupervisorDep, principal: PrincipalDep) -> JobBatchOut:
    """Queue every job, or none: each is checked as ``POST /v1/jobs`` checks one, the queue's and the owner's quota
    once for them all (429 when they do not all fit). Each job keeps its own deadline."""
    for i, job in enumerate(body.jobs):
        try:
            check_job_limits(sup.settings, job.prompt, job.max_tokens, job.deadline_s, job.min_tokens)
        except InvalidRequest as exc:
            raise InvalidRequest(f"jobs[{i}]: {exc}") from None
        check_priority(sup.settings, job.priority, principal.admin)
    submitted = sup.submit_many([job_request(job, principal.owner) for job in body.jobs])
    await sup.committed()  # a 202 promises the jobs are stored
    return JobBatchOut(ids=[s.job.id for s in submitted], created=sum(s.created for s in submitted))
