"""OpenAI-compatible routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

Each completion is one llmsup job. ``finish_reason`` is ``stop`` or ``length`` when generation ended on its
own, ``timeout`` when the job's deadline stopped it (partial text kept), ``cancelled`` when it was cancelled or
killed by an admin; every response (and the last stream chunk) carries ``llmsup: {job_id, status, deadline_s,
error}``. A job that failed is a 500 (``code: job_failed``), one that could not start within its
``queue_timeout_s`` a 429 (``code: job_expired``). A client that disconnects cancels its job unless the
``cancel_on_disconnect`` setting is off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from llmsup.supervisor.jobs import Job, JobStatus
from llmsup.supervisor.model_name import served_model_name
from llmsup.supervisor.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from llmsup.web import sse
from llmsup.web.auth import Principal, PrincipalDep
from llmsup.web.chat import template_for
from llmsup.web.deps import SupervisorDep
from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.follow import TextTracker, follow
from llmsup.web.limits import check_job_limits, check_priority
from llmsup.web.live import stream_slot
from llmsup.web.openai_schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    LlmsupInfo,
    ModelCard,
    ModelList,
    OpenAIError,
    Usage,
    _Sampling,
)

router = APIRouter(prefix="/v1", tags=["openai"])
DISCONNECT_NOTE = "cancelled: the client disconnected"


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": OpenAIError, "description": "OpenAI-style error"} for code in codes}


ERRORS = _errors(401, 403, 404, 413, 422, 429, 500)
STREAM_OR_JSON = sse.sse_response("JSON, or with stream=true SSE chunks (JSON) ending with `data: [DONE]`",
                                  json_data=False)


def served_models(sup: Supervisor) -> list[str]:
    return [served_model_name(sup.settings, sup.pool.engines.values())]


@router.get("/models", response_model=ModelList, responses=_errors(401))
async def list_models(sup: SupervisorDep, principal: PrincipalDep) -> ModelList:
    created = int(time.time())
    return ModelList(data=[ModelCard(id=name, created=created) for name in served_models(sup)])


@router.post(
    "/completions", response_model=CompletionResponse,
    responses={200: STREAM_OR_JSON, **ERRORS},
)
async def completions(body: CompletionRequest, request: Request, sup: SupervisorDep, principal: PrincipalDep,
                      response: Response) -> Any:
    model = _check_model(sup, body.model)
    prompt = body.text
    release = stream_slot(request, principal) if body.stream else None
    job = _submit(sup, principal, body, prompt, release)
    echo = prompt if body.echo else ""
    if body.stream:
        make = _completion_chunk(job, model)
        return _stream(sup, request, job, make, echo, include_usage=_usage_wanted(body), release=release)
    response.headers["X-Llmsup-Job-Id"] = job.id
    job = await _wait(sup, request, job.id)
    text = echo + job.output
    return CompletionResponse(
        id=f"cmpl-{job.id}", created=int(job.created_at), model=model,
        choices=[CompletionChoice(index=0, text=text, finish_reason=finish_reason(job))],
        usage=usage(job), llmsup=info(job),
    )


@router.post(
    "/chat/completions", response_model=ChatCompletionResponse,
    responses={200: STREAM_OR_JSON, **ERRORS},
)
async def chat_completions(body: ChatCompletionRequest, request: Request, sup: SupervisorDep,
                           principal: PrincipalDep, response: Response) -> Any:
    model = _check_model(sup, body.model)
    prompt = template_for(sup).render(body.messages, body.add_generation_prompt)
    release = stream_slot(request, principal) if body.stream else None
    job = _submit(sup, principal, body, prompt, release)
    if body.stream:
        make = _chat_chunk(job, model)
        return _stream(sup, request, job, make, "", include_usage=_usage_wanted(body), role_first=True,
                       release=release)
    response.headers["X-Llmsup-Job-Id"] = job.id
    job = await _wait(sup, request, job.id)
    return ChatCompletionResponse(
        id=f"chatcmpl-{job.id}", created=int(job.created_at), model=model,
        choices=[ChatChoice(index=0, message=AssistantMessage(content=job.output), finish_reason=finish_reason(job))],
        usage=usage(job), llmsup=info(job),
    )


# the job behind a completion ------------------------------------------------------------------


def _check_model(sup: Supervisor, model: str | None) -> str:
    names = served_models(sup)
    if model is None:
        return names[0]
    if model not in names:
        raise OpenAIHTTPError(404, f"model {model!r} is not served here (served: {', '.join(names)})",
                              code="model_not_found", param="model")
    return model


def _submit(sup: Supervisor, principal: Principal, body: _Sampling, prompt: str,
            release: Callable[[], None] | None = None) -> Job:
    """Submit the job; a stream slot taken for it (``release``) is given back if it cannot be submitted."""
    try:
        check_job_limits(sup.settings, prompt, body.max_tokens, body.deadline, body.min_tokens)
        priority = -(body.priority or 0)  # vLLM: lower runs first; llmsup: higher runs first
        check_priority(sup.settings, priority, principal.admin, vllm_scale=True)
        return sup.submit(JobRequest(
            prompt=prompt, max_tokens=body.max_tokens, temperature=body.temperature or 0.0, stop=body.stops(),
            deadline_s=body.deadline, queue_timeout_s=body.queue_timeout_s, priority=priority,
            owner=principal.owner, extra=body.extra_params(),
        )).job
    except BaseException:
        if release is not None:
            release()
        raise


def _usage_wanted(body: _Sampling) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


async def _wait(sup: Supervisor, request: Request, job_id: str) -> Job:
    """Wait for the job to end; if the client goes away first, cancel the job (by default) and stop waiting."""
    waiter = asyncio.ensure_future(sup.wait(job_id))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        finished = waiter.done() and not waiter.cancelled()
        if not finished:  # the client left (or the server is stopping): nobody wants this job any more
            waiter.cancel()
            if sup.settings.cancel_on_disconnect:
                sup.cancel(job_id, note=DISCONNECT_NOTE)
    if not finished:
        return sup.get(job_id)  # the answer goes nowhere
    job = waiter.result()
    _raise_for(job)
    return job


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _raise_for(job: Job) -> None:
    if job.status is JobStatus.FAILED:
        raise OpenAIHTTPError(500, f"job {job.id} failed: {job.error}", code="job_failed")
    if job.status is JobStatus.EXPIRED:  # it could not start within its queue_timeout_s: back off, like a 429
        raise OpenAIHTTPError(429, f"job {job.id} expired: {job.error}", code="job_expired",
                              headers={"Retry-After": "1"})


def finish_reason(job: Job) -> str | None:
    if job.status is JobStatus.SUCCEEDED:
        return job.finish_reason or "stop"
    if job.status is JobStatus.TIMED_OUT:
        return "timeout"
    if job.status is JobStatus.CANCELLED:
        return "cancelled"
    return None


def usage(job: Job) -> Usage:
    return Usage(prompt_tokens=job.prompt_tokens, completion_tokens=job.tokens,
                 total_tokens=job.prompt_tokens + job.tokens)


def info(job: Job) -> LlmsupInfo:
    return LlmsupInfo(job_id=job.id, status=job.status.value, deadline_s=job.deadline_s, error=job.error)


# streaming ------------------------------------------------------------------------------------

Chunk = Callable[..., dict[str, Any]]


def _completion_chunk(job: Job, model: str) -> Chunk:
    def make(text: str = "", finish: str | None = None, role: bool = False) -> dict[str, Any]:
        return {"id": f"cmpl-{job.id}", "object": "text_completion", "created": int(job.created_at), "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

    return make


def _chat_chunk(job: Job, model: str) -> Chunk:
    def make(text: str = "", finish: str | None = None, role: bool = False) -> dict[str, Any]:
        delta: dict[str, Any] = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
        return {"id": f"chatcmpl-{job.id}", "object": "chat.completion.chunk", "created": int(job.created_at),
                "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    return make


def _stream(sup: Supervisor, request: Request, job: Job, make: Chunk, echo: str, include_usage: bool,
            role_first: bool = False, release: Callable[[], None] | None = None) -> sse.EventStream:
    job_id = job.id

    async def chunks() -> AsyncIterator[bytes]:
        if role_first:
            yield sse.event(make(role=True))
        if echo:
            yield sse.event(make(echo))
        tracker = TextTracker()
        final: Job | None = None
        async for u in follow(sup, job_id, sup.settings.sse_ping_s):
            if u.kind == "ping":
                yield sse.PING
                continue
            delta = tracker.update(u)
            if delta or u.kind == "token":  # one chunk per token, as vLLM sends (even while text is held back)
                yield sse.event(make(delta))
            if u.status is not None and u.status.terminal:
                final = u.job
        if final is None:
            yield sse.event({"error": {"message": "the server is shutting down", "type": "server_error",
                                       "param": None, "code": "shutdown"}})
        elif final.status in (JobStatus.FAILED, JobStatus.EXPIRED):
            code = "job_failed" if final.status is JobStatus.FAILED else "job_expired"
            yield sse.event({"error": {"message": f"job {final.id} {final.status.value}: {final.error}",
                                       "type": "server_error", "param": None, "code": code}})
        else:
            last = make(finish=finish_reason(final))
            last["llmsup"] = info(final).model_dump()
            yield sse.event(last)
            if include_usage:
                yield sse.event({**make(), "choices": [], "usage": usage(final).model_dump()})
        yield b"data: [DONE]\n\n"

    def on_close(completed: bool) -> None:
        if not completed and sup.settings.cancel_on_disconnect and not sup.get(job_id).status.terminal:
            sup.cancel(job_id, note=DISCONNECT_NOTE)

    web_metrics = getattr(request.app.state, "web_metrics", None)
    return sse.EventStream(chunks(), on_close=on_close, headers={"X-Llmsup-Job-Id": job_id},
                           gauge=web_metrics.sse_streams if web_metrics else None, release=release)
