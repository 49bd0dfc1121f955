"""Error mapping: caller mistakes become clear 4xx answers, never a 500 with a traceback.

Native routes answer ``{"error": message, "detail": ...}``; the OpenAI-compatible routes answer OpenAI's
shape ``{"error": {"message", "type", "param", "code"}}`` so that OpenAI clients show the message.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from llmsup.supervisor.core.requests import (
    EngineBusy,
    EngineNotFound,
    HostNotFound,
    HostNotRevocable,
    InvalidRequest,
    JobNotFound,
    PoolNotFound,
    QueueFull,
)
from llmsup.supervisor.core.transitions import InvalidTransition

log = logging.getLogger("llmsup.web")
OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize", "/detokenize", "/tokenizer_info",
                "/v1/responses", "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/v1/embeddings", "/pooling",
                "/classify", "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank")
OPENAI_TYPES = {
    401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
}


class OpenAIHTTPError(Exception):
    """An error of an OpenAI route with its own type / code (e.g. model_not_found, job_failed)."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


class PriorityTooHigh(Exception):
    """A caller without the admin token asked for a priority above ``max_user_priority`` (403)."""


class TooManyStreams(Exception):
    """No event stream slot left for this owner, or in all (429)."""


def is_openai(path: str) -> bool:
    return path.startswith(OPENAI_PATHS)


def invalid_status(path: str) -> int:
    """Invalid requests: 400 on the OpenAI-compatible routes (as OpenAI and vLLM answer), 422 on the native ones."""
    return 400 if is_openai(path) else 422


def error_body(path: str, status: int, message: str, detail: Any = None, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    if not is_openai(path):
        return {"error": message, "detail": detail}
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(request: Request, status: int, message: str, detail: object = None, headers: dict[str, str] | None = None,
           param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, status, message, detail, param, code), status_code=status,
                        headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts = []
    param = None
    for err in exc.errors()[:5]:
        if err.get("type") == "json_invalid":
            return "request body is not valid JSON", None
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        param = param or where or None
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown field {where!r}")
        else:
            parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request", param


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


# errors of the control plane that map to one status each, their message as it is
STATUS_OF: dict[type[Exception], int] = {JobNotFound: 404, PoolNotFound: 404, EngineNotFound: 404, HostNotFound: 404,
                                         HostNotRevocable: 409, EngineBusy: 409}


def install(app: FastAPI) -> None:  # noqa: C901 - one exception handler per error class, registered together
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        safe = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()[:20]]
        message, param = _validation_message(exc)
        return _error(request, invalid_status(request.url.path), message, safe, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":  # e.g. not UTF-8
            return _error(request, invalid_status(request.url.path), "request body is not valid JSON")
        if exc.status_code == 405:  # one route answers per method: list every method of the path
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return _error(request, exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(OpenAIHTTPError)
    async def _openai(request: Request, exc: OpenAIHTTPError) -> JSONResponse:
        return _error(request, exc.status, exc.message, headers=exc.headers, param=exc.param, code=exc.code)

    async def _by_status(request: Request, exc: Exception) -> JSONResponse:
        return _error(request, STATUS_OF[type(exc)], str(exc))

    for error_class in STATUS_OF:
        app.add_exception_handler(error_class, _by_status)

    @app.exception_handler(InvalidRequest)
    async def _bad(request: Request, exc: InvalidRequest) -> JSONResponse:
        return _error(request, invalid_status(request.url.path), str(exc))

    @app.exception_handler(InvalidTransition)
    async def _conflict(request: Request, exc: InvalidTransition) -> JSONResponse:
        return _error(request, 409, str(exc))

    @app.exception_handler(QueueFull)
    async def _full(request: Request, exc: QueueFull) -> JSONResponse:
        return _error(request, 429, str(exc), headers={"Retry-After": str(int(exc.retry_after_s + 0.999))},
                      code=getattr(exc, "code", "queue_full"))

    @app.exception_handler(PriorityTooHigh)
    async def _priority(request: Request, exc: PriorityTooHigh) -> JSONResponse:
        return _error(request, 403, str(exc), param="priority", code="priority_not_allowed")

    @app.exception_handler(TooManyStreams)
    async def _streams(request: Request, exc: TooManyStreams) -> JSONResponse:
        return _error(request, 429, str(exc), headers={"Retry-After": "5"}, code="too_many_streams")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(request, 500, "internal error (logged on the server)")
