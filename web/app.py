"""The app factory: FastAPI + a lifespan around one control plane (``supervisor/port.py``)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from llmsup.supervisor import __version__
from llmsup.supervisor.metrics.loop_lag import LoopLag
from llmsup.supervisor.port import ControlPlane
from llmsup.supervisor.rundir import prepare_run_dir, write_private
from llmsup.supervisor.settings import Settings
from llmsup.supervisor.store import retention
from llmsup.web import (
    dashboard,
    docs_page,
    errors,
    live,
    lora,
    metrics,
    openapi,
    routes_admin,
    routes_batch,
    routes_jobs,
    routes_openai,
    routes_pipelines,
    routes_pooling,
    routes_serving,
    serving_responses,
    tokens,
)
from llmsup.web.auth import Auth
from llmsup.web.chat_parsing import parsing_for
from llmsup.web.crosssite import CrossSiteGuard
from llmsup.web.deps import SupervisorDep
from llmsup.web.hosts import HostAllowlist, allowed_hosts, is_wildcard
from llmsup.web.limits import BodySizeLimit, StreamSlots
from llmsup.web.listing import SharedCounts
from llmsup.web.metrics import HTTPMetrics, WebMetrics
from llmsup.web.request_id import RequestIdHeaders
from llmsup.web.schema_check import SchemaChecker
from llmsup.web.schemas import Health
from llmsup.web.serving_chat import parser_names

log = logging.getLogger("llmsup.web")


def create_app(settings: Settings | None = None, supervisor: ControlPlane | None = None,  # noqa: C901 - the factory's nested lifespan and health routes
               make: Callable[[Settings], ControlPlane] | None = None) -> FastAPI:
    """Build the app. With ``supervisor`` given, its owner starts and stops it; otherwise the lifespan builds one
    with ``make`` (the composition root passes the supervisor class), starts it and stops it."""
    settings = settings or (supervisor.settings if supervisor else Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = supervisor is None
        if supervisor is not None:
            sup = supervisor
        elif make is not None:
            sup = make(settings)
        else:
            raise RuntimeError("create_app needs a control plane: a supervisor, or make= to build one")
        app.state.supervisor = sup
        app.state.web_metrics = WebMetrics.of(sup.metrics.registry)
        if owned:
            await sup.start()  # first: it refuses a run directory that a live supervisor owns, or not private
        try:
            prepare_run_dir(settings.run_dir)
            app.state.auth = Auth.from_settings(settings)
        except Exception:
            if owned:
                await sup.stop()
            raise
        _write_server_file(settings)
        pruner = None
        if retention.enabled(settings) and (owned or sup.started):
            pruner = asyncio.ensure_future(sup.prune_forever())
        warm_tokenizer = asyncio.ensure_future(_warm(sup))
        loop_lag = asyncio.ensure_future(LoopLag.of(sup.metrics.registry).run())
        try:
            yield
        finally:
            warm_tokenizer.cancel()
            loop_lag.cancel()
            app.state.schema_checker.close()
            if pruner is not None:
                pruner.cancel()
                await asyncio.gather(pruner, return_exceptions=True)
            if owned:
                await sup.stop()
            _remove_server_file(settings)

    docs = not settings.disable_fastapi_docs
    app = FastAPI(title="llmsup", version=__version__, lifespan=lifespan,
                  description="LLM job supervisor on IPyParallel: deadlines that really free the engine.",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json" if docs else None)
    errors.install(app)
    app.state.schema_checker = SchemaChecker()  # its worker process starts with the first schema
    app.state.stream_slots = StreamSlots(settings.sse_max_per_owner, settings.sse_max_total)
    app.state.live_counts = SharedCounts()
    app.state.live_reads = live.SharedStatusReads()
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(CrossSiteGuard, allowed_origins=settings.allowed_origins)  # on its headers: before the body
    if settings.require_api_keys == "off":  # the DNS-rebinding guard: keyless, a browser's page could reach us
        app.add_middleware(HostAllowlist, allowed=allowed_hosts(settings), wildcard_bind=is_wildcard(settings.host))
    app.add_middleware(HTTPMetrics)
    if settings.enable_request_id_headers:
        app.add_middleware(RequestIdHeaders)
    if settings.allowed_origins:  # CORS as vLLM's server: outermost, so that a preflight is answered first
        app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins,
                           allow_methods=settings.allowed_methods, allow_headers=settings.allowed_headers,
                           allow_credentials=settings.allow_credentials)
    for module in (routes_batch, routes_jobs, routes_pipelines, live, routes_openai, serving_responses, lora,
                   routes_serving, routes_pooling, routes_admin, metrics, dashboard):
        app.include_router(module.router)
    openapi.install(app, settings)
    if docs:
        docs_page.install(app, settings.root_path)

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    async def readyz(sup: SupervisorDep) -> Health:
        from fastapi.responses import JSONResponse

        n = sup.serving_engines()
        if not sup.ready():
            return JSONResponse({"status": "not ready", "engines": n}, status_code=503)  # type: ignore[return-value]
        return Health(status="ready", engines=n)

    return app


def _write_server_file(settings: Settings) -> None:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    host = f"[{host}]" if ":" in host and host != "::" else ("[::1]" if host == "::" else host)
    data = {"url": f"http://{host}:{settings.port}", "pid": os.getpid()}
    write_private(settings.server_file, json.dumps(data))  # the run directory exists: the supervisor made it


def _remove_server_file(settings: Settings) -> None:
    settings.server_file.unlink(missing_ok=True)


async def _warm(sup: ControlPlane) -> None:
    """The tokenizer, then the chat parsers the server names (they import vLLM: seconds), before the first request
    needs them."""
    await tokens.warm(sup)
    names = parser_names(sup)
    if names.any:
        tok = await tokens.tokenizer_for(tokens.served_model(sup))
        await parsing_for(names, tok.tok if isinstance(tok, tokens.HFTokenizer) else None)
