"""The dashboard: one static page and its script, fed live by ``GET /v1/events`` (no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

STATIC = Path(__file__).parent / "static"
router = APIRouter(include_in_schema=False)
NO_CACHE = {"Cache-Control": "no-cache"}


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/dashboard")


@router.get("/dashboard")
async def dashboard() -> FileResponse:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html", headers=NO_CACHE)


@router.get("/dashboard.js")
async def dashboard_js() -> FileResponse:
    return FileResponse(STATIC / "dashboard.js", media_type="text/javascript", headers=NO_CACHE)
