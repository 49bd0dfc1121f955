"""FastAPI dependencies (``Annotated`` aliases) shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from llmsup.supervisor.port import ControlPlane
from llmsup.supervisor.settings import Settings


async def get_supervisor(request: Request) -> ControlPlane:  # async: no thread hop per request
    sup: ControlPlane = request.app.state.supervisor
    return sup


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.supervisor.settings
    return settings


SupervisorDep = Annotated[ControlPlane, Depends(get_supervisor)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
