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

import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request, Response

from llmsup.engines.protocol import TokenLogprob
from llmsup.web import sse
from llmsup.web.auth import PrincipalDep
from llmsup.web.deps import SupervisorDep
from llmsup.web.live import stream_slot
from llmsup.web.lora import adapters
from llmsup.web.openai_format import completion_logprobs, finish_reason, info, prompt_logprobs_out, usage
from llmsup.web.openai_jobs import (
    check_model,
    first_prompt_token,
    prompt_ids,
    prompt_job,
    response_id,
    stream,
    submit,
    wait_all,
)
from llmsup.web.openai_params import completion_prompt_logprobs, plan_jobs
from llmsup.web.openai_responses import (
    ChatCompletionResponse,
    CompletionChoice,
    CompletionResponse,
    ModelCard,
    ModelList,
    OpenAIError,
)
from llmsup.web.openai_schemas import ChatCompletionRequest, CompletionRequest
from llmsup.web.serving_chat import ChatServing
from llmsup.web.tokens import served_model

router = APIRouter(prefix="/v1", tags=["openai"])


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": OpenAIError, "description": "OpenAI-style error"} for code in codes}


ERRORS = _errors(400, 401, 403, 404, 413, 429, 500)
STREAM_OR_JSON = sse.sse_response("JSON, or with stream=true SSE chunks (JSON) ending with `data: [DONE]`",
                                  json_data=False)


@router.get("/models", response_model=ModelList, responses=_errors(401))
async def list_models(sup: SupervisorDep, principal: PrincipalDep) -> ModelList:
    created = int(time.time())
    pools = sup.served_pools()
    models = {pool: served_model(sup, pool) for pool in set(pools.values())}  # each pool's own facts
    cards = []
    for name, pool in pools.items():
        model = models[pool]
        cards.append(ModelCard(id=name, created=created, root=model.path if model else None,
                               max_model_len=model.max_model_len if model else None))
    first = next(iter(pools))
    base = models[pools[first]]
    cards += [ModelCard(id=a.name, created=created, root=a.path, parent=first,
                        max_model_len=base.max_model_len if base else None) for a in adapters(sup).values()]
    return ModelList(data=cards)


@router.post("/completions", response_model=CompletionResponse, response_model_exclude_none=False,
             responses={200: STREAM_OR_JSON, **ERRORS})
async def completions(body: CompletionRequest, request: Request, sup: SupervisorDep, principal: PrincipalDep,
                      response: Response) -> Any:
    model, adapter = check_model(sup, body.model)
    plan = await plan_jobs(sup, principal, body, body.prompts(), request.app.state.schema_checker,
                           add_special_tokens=body.add_special_tokens is not False,
                           prompt_logprobs=completion_prompt_logprobs(body), lora=adapter.params() if adapter else None)
    release = stream_slot(request, principal) if body.stream else None
    jobs = submit(sup, plan, release)
    rid = response_id(request, body.request_id, "cmpl", jobs[0].id)
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
            return {"id": rid, "object": "text_completion", "created": int(jobs[0].created_at),
                    "model": model, "choices": [choice]}

        head = [make(i, plan.prompt_of(i).text) for i in range(len(jobs))] if body.echo else []
        offsets = [len(plan.prompt_of(i).text) if body.echo else 0 for i in range(len(jobs))]
        return stream(sup, request, plan, jobs, make, body, head, release, offsets)
    response.headers["X-Llmsup-Job-Id"] = jobs[0].id
    done = await wait_all(sup, request, [j.id for j in jobs])
    choices = []
    for i, job in enumerate(done):
        prompt = plan.prompt_of(i)
        echo = prompt.text if body.echo else ""
        logprobs = None
        if body.logprobs is not None:
            first = first_prompt_token(plan, i) if body.echo else None
            prompt_lps = prompt_job(done, plan, i).prompt_logprobs if body.echo else ()
            logprobs = completion_logprobs(job.logprobs, k, as_ids, prompt=prompt_lps, first_prompt_token=first,
                                           offset=0)
        choices.append(CompletionChoice(
            index=i, text=echo + job.output, logprobs=logprobs, finish_reason=finish_reason(job),
            prompt_logprobs=prompt_logprobs_out(prompt_job(done, plan, i).prompt_logprobs,
                                                body.prompt_logprobs is not None),
            prompt_token_ids=list(prompt_ids(plan, done, i)) if body.return_token_ids else None,
            token_ids=list(job.token_ids) if body.return_token_ids else None,
            llmsup=info(job) if len(done) > 1 else None,
        ))
    return CompletionResponse(id=rid, created=int(jobs[0].created_at), model=model, choices=choices,
                              usage=usage(done, plan.n, [p.length for p in plan.prompts]), llmsup=info(done[0]))


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses={200: STREAM_OR_JSON, **ERRORS})
async def chat_completions(body: ChatCompletionRequest, request: Request, sup: SupervisorDep,
                           principal: PrincipalDep, response: Response) -> Any:
    return await ChatServing(sup, principal).create(body, request, response)
