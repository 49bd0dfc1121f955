"""``/v1/pipelines``: multi-step jobs (create, get, list, cancel, live events). Each step is an ordinary job, seen in
``/v1/jobs`` with its ``pipeline`` id; the supervisor's pipeline runner decides what runs when."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from llmsup.supervisor.core.events import Subscription
from llmsup.supervisor.core.requests import JobNotFound
from llmsup.supervisor.pipelines.records import Pipeline
from llmsup.supervisor.pipelines.runner import PipelineNotFound
from llmsup.supervisor.pipelines.spec import check
from llmsup.supervisor.pools import pools_of
from llmsup.web import sse
from llmsup.web.auth import Principal, PrincipalDep
from llmsup.web.deps import SupervisorDep
from llmsup.web.live import stream_slot
from llmsup.web.pipeline_schemas import PipelineCreate, PipelineList, PipelineOut
from llmsup.web.schemas import errors

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])
AUTH = (401,)


def pools(sup: SupervisorDep) -> list[str]:
    """The model pools a step may name: by their names and by their models' served names."""
    served = sup.served_pools()
    return list(dict.fromkeys([*served.values(), *served]))


def function_pools(sup: SupervisorDep) -> list[str]:
    """The pools whose engines run registered functions (function steps)."""
    return [p.name for p in pools_of(sup.settings) if p.runs_functions]


def _visible(sup: SupervisorDep, pipeline_id: str, principal: Principal) -> Pipeline:
    try:
        p = sup.pipelines.get(pipeline_id)
    except PipelineNotFound:
        raise JobNotFound(pipeline_id) from None
    if not (principal.sees_all or p.owner == principal.owner):
        raise JobNotFound(pipeline_id)  # no hint that it exists
    return p


@router.post("", status_code=202, response_model=PipelineOut, responses=errors(*AUTH, 409, 413, 422, 429))
async def create_pipeline(body: PipelineCreate, sup: SupervisorDep, principal: PrincipalDep,
                          response: Response) -> PipelineOut:
    """Queue a pipeline: steps run when every step in their ``after`` succeeded; a failed or timed-out step ends the
    pipeline with its status (running steps cancelled, waiting ones skipped); ``deadline_s`` bounds the whole."""
    spec = check(body.spec(), pools(sup), sup.settings.functions, function_pools(sup))
    p, created = sup.pipelines.create(spec, principal.job_owner, body.idempotency_key, sup.clock())
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/pipelines/{p.id}"
    return PipelineOut.of(p)


@router.get("", response_model=PipelineList, responses=errors(*AUTH, 422))
async def list_pipelines(sup: SupervisorDep, principal: PrincipalDep,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> PipelineList:
    """Pipelines newest first (yours, with API keys on)."""
    owner = None if principal.sees_all else principal.owner
    rows = await asyncio.to_thread(sup.pipelines.recent, owner, limit)
    return PipelineList(pipelines=[PipelineOut.of(p) for p in rows])


@router.get("/{pipeline_id}", response_model=PipelineOut, responses=errors(*AUTH, 404, 422))
async def get_pipeline(
    pipeline_id: str,
    sup: SupervisorDep,
    principal: PrincipalDep,
    wait_s: Annotated[float, Query(ge=0, le=60, description="long-poll: answer when it changes or ends")] = 0,
) -> PipelineOut:
    p = _visible(sup, pipeline_id, principal)
    if wait_s > 0 and not p.status.terminal:
        sub = sup.pipelines.hub.subscribe(pipeline_id, maxsize=1000)
        try:
            await asyncio.wait_for(sub.get(), wait_s)
        except TimeoutError:
            pass
        finally:
            sub.close()
        p = sup.pipelines.get(pipeline_id)
    return PipelineOut.of(p)


@router.post("/{pipeline_id}/cancel", status_code=202, response_model=PipelineOut, responses=errors(*AUTH, 404, 422))
async def cancel_pipeline(pipeline_id: str, sup: SupervisorDep, principal: PrincipalDep) -> PipelineOut:
    """Cancel: its queued and running jobs are cancelled (running ones through the escalation ladder), waiting
    steps skipped."""
    _visible(sup, pipeline_id, principal)
    return PipelineOut.of(sup.pipelines.cancel(pipeline_id, sup.clock()))


@router.get("/{pipeline_id}/events", response_class=sse.EventStream,
            responses={200: sse.sse_response("SSE stream of the pipeline", ["pipeline", "end"]),
                       **errors(*AUTH, 404, 422, 429, stream=True)})
async def pipeline_events(pipeline_id: str, request: Request, sup: SupervisorDep,
                          principal: PrincipalDep) -> sse.EventStream:
    """Server-Sent Events: ``event: pipeline`` (the whole pipeline, as ``GET``) first and on every change, then
    ``event: end`` with the ended pipeline. Comment lines (``: ping``) keep idle connections alive."""
    _visible(sup, pipeline_id, principal)
    sub = sup.pipelines.hub.subscribe(pipeline_id, maxsize=1000)
    return sse.EventStream(_events(sup, pipeline_id, sub), on_close=lambda completed: sub.close(),
                           release=stream_slot(request, principal))


async def _events(sup: SupervisorDep, pipeline_id: str, sub: Subscription) -> AsyncIterator[bytes]:
    ping_s = sup.settings.sse_ping_s
    try:
        while True:
            p = sup.pipelines.get(pipeline_id)  # the record after every change: the latest state, never a stale one
            body = PipelineOut.of(p).model_dump(mode="json")
            yield sse.event(body, "pipeline")
            if p.status.terminal:
                yield sse.event(body, "end")
                return
            while True:
                try:
                    event = await asyncio.wait_for(sub.get(), ping_s)
                except TimeoutError:
                    yield sse.PING
                    continue
                if event is None:  # the hub closed (server stopping) or this subscriber fell behind: the client
                    return  # reconnects and gets the whole pipeline first
                sub.ready(1000)  # changes queued meanwhile: the one snapshot above covers them
                break
    finally:
        sub.close()
