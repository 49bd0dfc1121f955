"""Admin routes: kill a job, list and manage engines."""

from __future__ import annotations

from fastapi import APIRouter

from web.deps import SupervisorDep
from web.schemas import EngineList, EngineOut, ErrorOut, JobOut

router = APIRouter(prefix="/admin", tags=["admin"])
ERRORS = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}}


@router.post("/jobs/{job_id}/kill", response_model=JobOut, status_code=202, responses=ERRORS)
async def kill_job(job_id: str, sup: SupervisorDep) -> JobOut:
    return JobOut.of(sup.kill(job_id))


@router.get("/engines", response_model=EngineList)
async def list_engines(sup: SupervisorDep) -> EngineList:
    return EngineList(engines=[EngineOut(**e) for e in sup.engine_views()])


@router.post("/engines/{engine_id}/interrupt", responses=ERRORS)
async def interrupt_engine(engine_id: int, sup: SupervisorDep) -> dict[str, list[str]]:
    return {"interrupted": sup.interrupt_engine(engine_id)}


@router.post("/engines/{engine_id}/restart", status_code=202, responses=ERRORS)
async def restart_engine(engine_id: int, sup: SupervisorDep) -> dict[str, int]:
    sup._engine(engine_id)  # 404 before anything starts
    sup._spawn(sup.restart_engine(engine_id))
    return {"restarting": engine_id}


@router.post("/engines/{engine_id}/drain", responses=ERRORS)
async def drain_engine(engine_id: int, sup: SupervisorDep, undo: bool = False) -> dict[str, object]:
    sup.drain_engine(engine_id, drain=not undo)
    return {"engine": engine_id, "draining": not undo}
