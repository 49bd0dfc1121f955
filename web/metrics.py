"""``/metrics`` (Prometheus text format) and the web layer's own metrics.

The supervisor's registry (queue depth, running jobs, outcomes by status, queue wait and run time histograms,
interrupt / escalation steps, engine restarts, tokens, time to first token) gets three more families here:
HTTP requests by route and status, their latency, and open SSE streams.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llmsup.web.deps import SupervisorDep

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


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus"}})
async def metrics(sup: SupervisorDep, request: Request) -> Response:
    update = getattr(sup, "_update_gauges", None)
    if update is not None and sup.started:
        update()  # gauges as of now, not as of the last health tick
    return Response(generate_latest(sup.metrics.registry), media_type=CONTENT_TYPE_LATEST)
