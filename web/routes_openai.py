"""OpenAI-compatible routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

Each choice is one llmsup job (``n`` x prompts jobs per request, see ``web/openai_params.py``).
``finish_reason`` is ``stop`` or ``length`` when generation ended on its own, ``timeout`` when the job's
deadline stopped it (partial text kept), ``cancelled`` when it was cancelled or killed by an admin; every
response (and each choice's last stream chunk) carries ``llmsup: {job_id, status, deadline_s, error}``. An
invalid request is a 400 (OpenAI's error body), a job that failed a 500 (``code: job_failed``), one that could
not start within its ``queue_timeout_s`` a 429 (``code: job_expired``). A client that disconnects cancels its
jobs unless the ``cancel_on_disconnect`` setting is off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Request, Response

from llmsup.engines.protocol import TokenLogprob
from llmsup.supervisor.core.jobs import Job
from llmsup.supervisor.port import ControlPlane
from llmsup.web import sse
from llmsup.web.auth import PrincipalDep
from llmsup.web.chat import render_chat, template_for
from llmsup.web.deps import SupervisorDep
from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.live import stream_slot
from llmsup.web.openai_format import (
    chat_logprobs,
    completion_logprobs,
    finish_reason,
    info,
    prompt_logprobs_out,
    usage,
)
from llmsup.web.openai_params import Plan, completion_prompt_logprobs, plan_jobs
from llmsup.web.openai_responses import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionResponse,
    ModelCard,
    ModelList,
    OpenAIError,
)
from llmsup.web.openai_schemas import ChatCompletionRequest, CompletionRequest
from llmsup.web.openai_stream import ChoiceState, chunks, failed_job, stream_response
from llmsup.web.tokens import served_model

router = APIRouter(prefix="/v1", tags=["openai"])
DISCONNECT_NOTE = "cancelled: the client disconnected"


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": OpenAIError, "description": "OpenAI-style error"} for code in codes}


ERRORS = _errors(400, 401, 403, 404, 413, 429, 500)
STREAM_OR_JSON = sse.sse_response("JSON, or with stream=true SSE chunks (JSON) ending with `data: [DONE]`",
                                  json_data=False)


def served_models(sup: ControlPlane) -> list[str]:
    return [sup.served_model_name()]


@router.get("/models", response_model=ModelList, responses=_errors(401))
async def list_models(sup: SupervisorDep, principal: PrincipalDep) -> ModelList:
    created = int(time.time())
    model = served_model(sup)
    return ModelList(data=[ModelCard(id=name, created=created, root=model.path if model else None,
                                     max_model_len=model.max_model_len if model else None)
                           for name in served_models(sup)])


@router.post("/completions", response_model=CompletionResponse, response_model_exclude_none=False,
             responses={200: STREAM_OR_JSON, **ERRORS})
async def completions(body: CompletionRequest, request: Request, sup: SupervisorDep, principal: PrincipalDep,
                      response: Response) -> Any:
    model = _check_model(sup, body.model)
    plan = await plan_jobs(sup, principal, body, body.prompts(), add_special_tokens=body.add_special_tokens is not False,
                           prompt_logprobs=completion_prompt_logprobs(body))
    release = stream_slot(request, principal) if body.stream else None
    jobs = _submit(sup, plan, release)
    as_ids = bool(body.return_tokens_as_token_ids)
    k = body.logprobs or 0
    if body.stream:
        def make(index: int, text: str, finish: str | None = None, role: bool = False,
                 entries: Sequence[TokenLogprob] = (), ids: Sequence[int] = (), offset: int = 0) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
            if body.logprobs is not None and entries:
                choice["logprobs"] = completion_logprobs(entries, k, as_ids, offset=offset).model_dump()
            if body.return_token_ids and ids:
                choice["token_ids"] = list(ids)
            return {"id": f"cmpl-{jobs[0].id}", "object": "text_completion", "created": int(jobs[0].created_at),
                    "model": model, "choices": [choice]}

        head = [make(i, plan.prompt_of(i).text) for i in range(len(jobs))] if body.echo else []
        offsets = [len(plan.prompt_of(i).text) if body.echo else 0 for i in range(len(jobs))]
        return _stream(sup, request, plan, jobs, make, body, head, release, offsets)
    response.headers["X-Llmsup-Job-Id"] = jobs[0].id
    done = await _wait_all(sup, request, [j.id for j in jobs])
    choices = []
    for i, job in enumerate(done):
        prompt = plan.prompt_of(i)
        echo = prompt.text if body.echo else ""
        logprobs = None
        if body.logprobs is not None:
            first = _first_prompt_token(plan, i) if body.echo else None
            prompt_lps = _prompt_job(done, plan, i).prompt_logprobs if body.echo else ()
            logprobs = completion_logprobs(job.logprobs, k, as_ids, prompt=prompt_lps, first_prompt_token=first,
                                           offset=0)
        choices.append(CompletionChoice(
            index=i, text=echo + job.output, logprobs=logprobs, finish_reason=finish_reason(job),
            prompt_logprobs=prompt_logprobs_out(_prompt_job(done, plan, i).prompt_logprobs,
                                                body.prompt_logprobs is not None),
            prompt_token_ids=list(_prompt_ids(plan, done, i)) if body.return_token_ids else None,
            token_ids=list(job.token_ids) if body.return_token_ids else None,
            llmsup=info(job) if len(done) > 1 else None,
        ))
    return CompletionResponse(id=f"cmpl-{jobs[0].id}", created=int(jobs[0].created_at), model=model, choices=choices,
                              usage=usage(done, plan.n, [p.length for p in plan.prompts]), llmsup=info(done[0]))


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses={200: STREAM_OR_JSON, **ERRORS})
async def chat_completions(body: ChatCompletionRequest, request: Request, sup: SupervisorDep,
                           principal: PrincipalDep, response: Response) -> Any:
    model = _check_model(sup, body.model)
    prompt = render_chat(template_for(sup), body.messages, body.add_generation_prompt and not body.continue_final_message,
                         bool(body.continue_final_message), body.chat_template_kwargs or {})
    plan = await plan_jobs(sup, principal, body, [prompt], add_special_tokens=bool(body.add_special_tokens))
    release = stream_slot(request, principal) if body.stream else None
    jobs = _submit(sup, plan, release)
    last = body.messages[-1]
    echo = last.text if body.echo and last.role == "assistant" else ""
    k = 1 << 30 if body.top_logprobs == -1 else (body.top_logprobs or 0)  # -1: every alternative there is
    as_ids = bool(body.return_tokens_as_token_ids)
    if body.stream:
        def make(index: int, text: str, finish: str | None = None, role: bool = False,
                 entries: Sequence[TokenLogprob] = (), ids: Sequence[int] = (), offset: int = 0) -> dict[str, Any]:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if role else (
                {"content": text} if text else {})
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            if body.logprobs and entries:
                choice["logprobs"] = chat_logprobs(entries, k, as_ids).model_dump()
            if body.return_token_ids and ids:
                choice["token_ids"] = list(ids)
            return {"id": f"chatcmpl-{jobs[0].id}", "object": "chat.completion.chunk",
                    "created": int(jobs[0].created_at), "model": model, "choices": [choice]}

        head = [make(i, "", role=True) for i in range(len(jobs))]
        head += [make(i, echo) for i in range(len(jobs))] if echo else []
        return _stream(sup, request, plan, jobs, make, body, head, release)
    response.headers["X-Llmsup-Job-Id"] = jobs[0].id
    done = await _wait_all(sup, request, [j.id for j in jobs])
    choices = [ChatChoice(
        index=i, message=AssistantMessage(content=echo + job.output),
        logprobs=chat_logprobs(job.logprobs, k, as_ids) if body.logprobs else None,
        finish_reason=finish_reason(job), token_ids=list(job.token_ids) if body.return_token_ids else None,
        llmsup=info(job) if len(done) > 1 else None,
    ) for i, job in enumerate(done)]
    return ChatCompletionResponse(
        id=f"chatcmpl-{jobs[0].id}", created=int(jobs[0].created_at), model=model, choices=choices,
        usage=usage(done, plan.n, [p.length for p in plan.prompts]), llmsup=info(done[0]),
        prompt_logprobs=prompt_logprobs_out(done[0].prompt_logprobs, body.prompt_logprobs is not None),
        prompt_token_ids=list(_prompt_ids(plan, done, 0)) if body.return_token_ids else None,
    )


# the jobs behind a completion -----------------------------------------------------------------


def _check_model(sup: ControlPlane, model: str | None) -> str:
    names = served_models(sup)
    if model is None:
        return names[0]
    if model not in names:
        raise OpenAIHTTPError(404, f"The model `{model}` does not exist (served: {', '.join(names)})",
                              code="model_not_found", param="model")
    return model


def _submit(sup: ControlPlane, plan: Plan, release: Callable[[], None] | None = None) -> list[Job]:
    """Submit every choice's job; if one is refused (a full queue, a quota), the ones queued are taken back and
    a stream slot taken for the request (``release``) is given back."""
    jobs: list[Job] = []
    try:
        for req in plan.requests:
            jobs.append(sup.submit(req).job)
    except BaseException:
        for job in jobs:
            sup.cancel(job.id, note="cancelled: the rest of its request was refused")
        if release is not None:
            release()
        raise
    return jobs


def _prompt_job(done: list[Job], plan: Plan, choice: int) -> Job:
    """The job that carries its prompt's logprobs and ids (the prompt's first choice)."""
    return done[(choice // plan.n) * plan.n]


def _prompt_ids(plan: Plan, done: list[Job], choice: int) -> tuple[int, ...]:
    return _prompt_job(done, plan, choice).prompt_token_ids or plan.prompt_of(choice).token_ids


def _first_prompt_token(plan: Plan, choice: int) -> str:
    prompt = plan.prompt_of(choice)
    tok = plan.tokenizer
    try:
        ids = list(prompt.token_ids) or (tok.encode(prompt.text) if tok is not None else [])
        return tok.decode(ids[:1]) if tok is not None and ids else ""
    except Exception:  # the sim backend: no vocabulary
        return ""


def _stream(sup: ControlPlane, request: Request, plan: Plan, jobs: list[Job], make: Any,
            body: CompletionRequest | ChatCompletionRequest, head: list[dict[str, Any]],
            release: Callable[[], None] | None, offsets: Sequence[int] = ()) -> sse.EventStream:
    """Stream the choices; ``offsets``: each choice's first text offset (completions with an echoed prompt)."""
    wants_logprobs, wants_ids = body.sample_logprobs() is not None, bool(body.return_token_ids)
    states = [ChoiceState(i, job.id, job.params.max_tokens, plan.prompt_of(i).length or 0, wants_logprobs, wants_ids,
                          offset=offsets[i] if i < len(offsets) else 0)
              for i, job in enumerate(jobs)]
    options = body.stream_options
    body_iter = chunks(sup, states, make, include_usage=bool(options and options.include_usage),
                       continuous=bool(options and options.include_usage and options.continuous_usage_stats), n=plan.n,
                       prompt_lengths=[p.length for p in plan.prompts], head=head, failure=failed_job)
    return stream_response(sup, request, [j.id for j in jobs], body_iter, DISCONNECT_NOTE, release)


async def _wait_all(sup: ControlPlane, request: Request, job_ids: list[str]) -> list[Job]:
    """Wait for every job to end; if the client goes away first, cancel them (by default) and stop waiting.
    A job that ended without an answer is the request's error (the others are cancelled)."""
    waiter: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*(sup.wait(j) for j in job_ids)))
    gone: asyncio.Future[Any] = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        finished = waiter.done() and not waiter.cancelled() and waiter.exception() is None
        if not finished:  # the client left (or the server is stopping): nobody wants these jobs any more
            waiter.cancel()
            waiter.add_done_callback(_consume)
            if sup.settings.cancel_on_disconnect:
                for job_id in job_ids:
                    if not sup.get(job_id).status.terminal:
                        sup.cancel(job_id, note=DISCONNECT_NOTE)
    if not finished:
        return [sup.get(j) for j in job_ids]  # the answer goes nowhere
    done: list[Job] = list(waiter.result())
    for job in done:
        failed = failed_job(job)
        if failed is not None:
            for other in done:
                if not other.status.terminal:
                    sup.cancel(other.id, note="cancelled: another choice of its request failed")
            status, message, code = failed
            raise OpenAIHTTPError(status, message, code=code, headers={"Retry-After": "1"} if status == 429 else None)
    return done


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve a cancelled gather's outcome (else asyncio logs it as never retrieved)."""
    if not future.cancelled():
        future.exception()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
