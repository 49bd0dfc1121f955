"""FastAPI dependencies (``Annotated`` aliases) shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings


async def get_supervisor(request: Request) -> Supervisor:  # async: no thread hop per request
    return request.app.state.supervisor


async def get_settings(request: Request) -> Settings:
    return request.app.state.supervisor.settings


SupervisorDep = Annotated[Supervisor, Depends(get_supervisor)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
