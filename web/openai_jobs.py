"""The jobs behind an OpenAI answer: submitting every choice's job, waiting for them all (cancelling them when
the client goes away), streaming them as one SSE body, and the served model a request names."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import Request

from llmsup.supervisor.core.jobs import Job
from llmsup.supervisor.port import ControlPlane
from llmsup.web import sse
from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.lora import Adapter, adapters
from llmsup.web.openai_params import Plan
from llmsup.web.openai_schemas import ChatCompletionRequest, CompletionRequest
from llmsup.web.openai_stream import ChoiceState, chunks, failed_job, stream_response

DISCONNECT_NOTE = "cancelled: the client disconnected"


def served_models(sup: ControlPlane) -> list[str]:
    """Every pool's served model names (a single pool: each alias; the first: the model of a request that names
    none)."""
    return list(sup.served_pools())




def check_model(sup: ControlPlane, model: str | None) -> tuple[str, Adapter | None]:
    """The name answers carry (the first served name, as vLLM's, whichever alias the request named; a LoRA
    adapter's own name) and the adapter the request names, if any."""
    pools = sup.served_pools()
    names = list(pools)
    adapter = adapters(sup).get(model) if model is not None and model not in pools else None
    if adapter is not None:
        return adapter.name, adapter
    if model is not None and model not in pools:
        served = [*names, *adapters(sup)]
        raise OpenAIHTTPError(404, f"The model `{model}` does not exist (served: {', '.join(served)})",
                              code="model_not_found", param="model")
    pool = pools[model] if model is not None else pools[names[0]]
    return next(name for name in names if pools[name] == pool), None  # an alias answers as its model's first name


def response_id(request: Request, request_id: str | None, prefix: str, job_id: str) -> str:
    """vLLM's answer id: the ``X-Request-Id`` header, else the body's ``request_id``, else (llmsup) the job's id."""
    given = request.headers.get("x-request-id") or request_id
    return f"{prefix}-{given[:256] if given else job_id}"


def submit(sup: ControlPlane, plan: Plan, release: Callable[[], None] | None = None) -> list[Job]:
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


def prompt_job(done: list[Job], plan: Plan, choice: int) -> Job:
    """The job that carries its prompt's logprobs and ids (the prompt's first choice)."""
    return done[(choice // plan.n) * plan.n]


def prompt_ids(plan: Plan, done: list[Job], choice: int) -> tuple[int, ...]:
    return prompt_job(done, plan, choice).prompt_token_ids or plan.prompt_of(choice).token_ids


def first_prompt_token(plan: Plan, choice: int) -> str:
    prompt = plan.prompt_of(choice)
    tok = plan.tokenizer
    try:
        ids = list(prompt.token_ids) or (tok.encode(prompt.text) if tok is not None else [])
        return tok.decode(ids[:1]) if tok is not None and ids else ""
    except Exception:  # the sim backend: no vocabulary
        return ""


def stream(sup: ControlPlane, request: Request, plan: Plan, jobs: list[Job], make: Any,
            body: CompletionRequest | ChatCompletionRequest, head: list[dict[str, Any]],
            release: Callable[[], None] | None, offsets: Sequence[int] = (), need_ids: bool = False) -> sse.EventStream:
    """Stream the choices; ``offsets``: each choice's first text offset (completions with an echoed prompt);
    ``need_ids``: ``make`` gets each token's id even when the client did not ask for ids (the chat parsers)."""
    wants_logprobs, wants_ids = body.sample_logprobs() is not None, bool(body.return_token_ids) or need_ids
    states = [ChoiceState(i, job.id, job.params.max_tokens, plan.prompt_of(i).length or 0, wants_logprobs, wants_ids,
                          offset=offsets[i] if i < len(offsets) else 0)
              for i, job in enumerate(jobs)]
    options = body.stream_options
    body_iter = chunks(sup, states, make, include_usage=bool(options and options.include_usage),
                       continuous=bool(options and options.include_usage and options.continuous_usage_stats), n=plan.n,
                       prompt_lengths=[p.length for p in plan.prompts], head=head, failure=failed_job)
    return stream_response(sup, request, [j.id for j in jobs], body_iter, DISCONNECT_NOTE, release)


async def wait_all(sup: ControlPlane, request: Request, job_ids: list[str]) -> list[Job]:
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
