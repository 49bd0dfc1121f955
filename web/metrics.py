"""``/metrics`` (Prometheus text format), ``/v1/stats`` (the last minutes, for the dashboard's charts) and the web
layer's own metrics.

The supervisor's registry (llmsup's ``llmsup_*`` series and vLLM's ``vllm:*`` names beside them: see
``docs/metrics.md``) gets three more families here: HTTP requests by route and status, their latency, and open
SSE streams.

When job routes need API keys, so do ``/metrics`` and ``/v1/stats`` (any valid key, or the admin token: job counts
and engine pids are not for everyone); the ``metrics_open`` setting keeps them open for a scraper without
credentials.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field

from llmsup.web.auth import get_auth, job_principal
from llmsup.web.deps import SupervisorDep
from llmsup.web.schemas import errors

router = APIRouter(tags=["health"])
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WebMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("llmsup_http_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=registry)
        self.latency = Histogram("llmsup_http_request_seconds", "HTTP request to response start (streams: to start)",
                                 ["route", "method"], buckets=HTTP_BUCKETS, registry=registry)
        self.sse_streams = Gauge("llmsup_sse_streams", "Open Server-Sent Event streams", registry=registry)

    @classmethod
    def of(cls, registry: CollectorRegistry) -> "WebMetrics":
        """One set per registry (an app rebuilt on the same supervisor reuses it)."""
        existing = getattr(registry, "_llmsup_web", None)
        if existing is None:
            existing = cls(registry)
            registry._llmsup_web = existing  # type: ignore[attr-defined]
        return existing


class HTTPMetrics:
    """Pure ASGI middleware: counts each response by route template (not raw path) and status."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                metrics = _metrics_of(scope)
                if metrics is not None:
                    metrics.latency.labels(_route(scope), scope["method"]).observe(time.perf_counter() - t0)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics = _metrics_of(scope)
            if metrics is not None:
                metrics.requests.labels(_route(scope), scope["method"], str(status)).inc()


def _metrics_of(scope: dict[str, Any]) -> WebMetrics | None:
    app = scope.get("app")
    return getattr(getattr(app, "state", None), "web_metrics", None)


def _route(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


async def metrics_access(request: Request) -> None:
    """401 without a valid API key or the admin token, when keys are on and ``metrics_open`` is off."""
    if request.app.state.supervisor.settings.metrics_open or not get_auth(request).keys_required:
        return
    await job_principal(request)


@router.get("/metrics", response_class=Response, dependencies=[Depends(metrics_access)],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus"},
                       **errors(401, stream=True)})
async def metrics(sup: SupervisorDep, request: Request) -> Response:
    if sup.started:
        sup.update_gauges()  # gauges as of now, not as of the last health tick
    # rendering takes milliseconds (docs/metrics.md): off the loop that runs deadlines (the registry is thread-safe)
    body = await asyncio.to_thread(generate_latest, sup.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class StatsSampleOut(BaseModel):
    t: float = Field(description="wall clock, seconds since the epoch")
    queued: int
    running: int
    tokens_per_s: float = Field(description="tokens generated per second since the previous sample")
    interrupted: int = Field(description="jobs stopped by their deadline or a cancel since the previous sample")
    killed: int = Field(description="engines SIGKILLed by the watchdog since the previous sample")
    standby: int = Field(description="warm standby engines")
    serving: int = Field(description="engines taking jobs (idle or busy)")


class StatsOut(BaseModel):
    now: float
    every_s: float = Field(description="seconds between samples")
    window_s: float = Field(description="seconds of history kept")
    model_name: str
    samples: list[StatsSampleOut]


@router.get("/v1/stats", response_model=StatsOut, dependencies=[Depends(metrics_access)], responses=errors(401, 422))
async def stats(
    sup: SupervisorDep,
    since: Annotated[float, Query(ge=0, description="only samples taken after this wall time (0: all)")] = 0,
) -> StatsOut:
    """The last minutes, one sample a second: queue depth, running jobs, tokens/s, interrupts, standby engines."""
    if sup.started:
        sup.update_gauges()
    history = sup.metrics.history
    return StatsOut(now=time.time(), every_s=history.every_s, window_s=history.window_s,
                    model_name=sup.served_model_name(),
                    samples=[StatsSampleOut(**s.to_dict()) for s in history.since(since)])
