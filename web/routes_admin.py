"""Admin routes (bearer admin token): kill jobs, see and manage engines, see and revoke hosts."""

from __future__ import annotations

import time
from typing import Annotated

import psutil
from fastapi import APIRouter, Depends, Query

from llmsup.supervisor.core.requests import JobNotFound
from llmsup.supervisor.port import ControlPlane
from llmsup.web.auth import require_admin
from llmsup.web.deps import SupervisorDep
from llmsup.web.schemas import (
    EngineActionOut,
    EngineList,
    EngineOut,
    HostList,
    HostOut,
    HostRevokedOut,
    JobOut,
    StartingEngineOut,
    errors,
)

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])
AUTH = (401, 403)


def engine_list(sup: ControlPlane) -> EngineList:
    """Engines with what they run, for how long against which deadline, jobs done, RSS and GPU."""
    engines = []
    for view in sup.engine_views():
        view = dict(view)
        view["busy_s"] = view["jobs"][0]["running_s"] if view["jobs"] else None
        view["deadline_s"] = None
        if view["job_id"]:
            try:
                view["deadline_s"] = sup.get(view["job_id"]).deadline_s
            except JobNotFound:
                pass
        if view["local"]:
            view["rss_mb"] = _live_rss_mb(view["pid"], view["rss_mb"])
        view["uptime_s"] = round(time.time() - view["started_at"], 1) if view["started_at"] else None
        engines.append(EngineOut(**view))
    starting = [StartingEngineOut(engine_set=set_id, gpu=gpu) for set_id, gpu in sup.starting_engines()]
    return EngineList(engines=engines, starting=starting)


def _live_rss_mb(pid: int, fallback: float) -> float:
    try:
        return round(psutil.Process(pid).memory_info().rss / (1024 * 1024), 1)
    except (psutil.Error, OSError):
        return fallback


@router.post("/jobs/{job_id}/kill", response_model=JobOut, status_code=202, responses=errors(*AUTH, 404, 422))
async def kill_job(job_id: str, sup: SupervisorDep) -> JobOut:
    """Kill any job: a queued one ends at once, a running one goes through the escalation ladder."""
    return JobOut.of(sup.kill(job_id))


@router.get("/engines", response_model=EngineList, responses=errors(*AUTH))
async def list_engines(sup: SupervisorDep) -> EngineList:
    return engine_list(sup)


@router.get("/hosts", response_model=HostList, responses=errors(*AUTH))
async def list_hosts(sup: SupervisorDep) -> HostList:
    """Hosts with their engines: the server's own first, then each host engines came from (a join agent's or a
    launcher's), up or lost, with how long since it was last heard."""
    engines = {e.id: e for e in engine_list(sup).engines}
    return HostList(hosts=[HostOut(**view, engine_list=[engines[i] for i in view["engines"] if i in engines])
                           for view in sup.host_views()])


@router.post("/hosts/{host}/revoke", response_model=HostRevokedOut, responses=errors(*AUTH, 404, 409))
async def revoke_host(host: str, sup: SupervisorDep) -> HostRevokedOut:
    """Revoke a host (its name, or its ``host_key`` where two share a name): its engines leave and their jobs run
    again elsewhere (not charged an attempt), its join agent is told to stop, its and its engines' channel keys are
    revoked, and nothing of that host is admitted again. The server's own host: 409."""
    return HostRevokedOut(**sup.revoke_host(host))


@router.get("/engines/{engine_id}", response_model=EngineOut, responses=errors(*AUTH, 404, 422))
async def get_engine(engine_id: int, sup: SupervisorDep) -> EngineOut:
    sup.engine_view(engine_id)  # 404
    return next(e for e in engine_list(sup).engines if e.id == engine_id)


@router.post("/engines/{engine_id}/interrupt", response_model=EngineActionOut, responses=errors(*AUTH, 404, 422))
async def interrupt_engine(engine_id: int, sup: SupervisorDep) -> EngineActionOut:
    """Interrupt every job on the engine (they end ``cancelled``); the engine stays and takes the next job."""
    return EngineActionOut(engine=engine_id, action="interrupt", jobs=sup.interrupt_engine(engine_id))


@router.post("/engines/{engine_id}/restart", response_model=EngineActionOut, status_code=202,
             responses=errors(*AUTH, 404, 409, 422))
async def restart_engine(engine_id: int, sup: SupervisorDep) -> EngineActionOut:
    """Replace the engine: a busy one is killed (its jobs end ``cancelled``), an idle one released and stopped."""
    jobs = sup.restart_engine(engine_id)  # 404 if there is no such engine, 409 if it is already on its way out
    return EngineActionOut(engine=engine_id, action="restart", jobs=jobs)


@router.post("/engines/{engine_id}/drain", response_model=EngineActionOut, responses=errors(*AUTH, 404, 422))
async def drain_engine(
    engine_id: int, sup: SupervisorDep,
    undo: Annotated[bool, Query(description="take new jobs again")] = False,
) -> EngineActionOut:
    """Let the engine finish its jobs and take no new ones (``undo=true`` reverses it)."""
    sup.drain_engine(engine_id, drain=not undo)
    view = sup.engine_view(engine_id)
    return EngineActionOut(engine=engine_id, action="undrain" if undo else "drain",
                           jobs=[j["job_id"] for j in view["jobs"]], state=view["state"])
