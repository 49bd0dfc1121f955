"""vLLM's pooling routes: ``/v1/embeddings``, ``/pooling``, ``/classify``, ``/score`` (``/v1/score``), ``/rerank``
(``/v1/rerank``, ``/v2/rerank``), for a pool whose engines run vLLM's pooling runner (``--runner pooling``,
``--convert embed|classify``, or a model vLLM runs as one).

Each input is one job (``web/pooling_jobs.py``). Scoring follows vLLM's rule for the model: an embedding model
(bi-encoder) embeds every text and scores each pair by the cosine similarity of their embeddings; a classifier with
one label (cross-encoder) scores each (query, document) pair, joined as the tokenizer joins a text pair, by its
output; any other model answers vLLM's 400. Embeddings come as floats or base64 (``embed_dtype`` float32 or
float16, ``endianness``), as vLLM's.
"""

from __future__ import annotations

import asyncio
import base64
import math
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from llmsup.supervisor.core.jobs import Job
from llmsup.web.auth import PrincipalDep
from llmsup.web.deps import SupervisorDep
from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.openai_format import info
from llmsup.web.openai_jobs import response_id
from llmsup.web.openai_responses import OpenAIError
from llmsup.web.pooling_jobs import (
    Target,
    pair_prompts,
    plan,
    prompt_tokens,
    prompts_of,
    require_task,
    rows,
    run,
    target,
)
from llmsup.web.pooling_schemas import (
    ClassificationData,
    ClassificationRequest,
    EmbeddingData,
    EmbeddingRequest,
    Encoded,
    ListResponse,
    PoolingData,
    PoolingRequest,
    PoolingUsage,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    ScoreData,
    ScoreRequest,
)
from llmsup.web.tokens import tokenizer_for

router = APIRouter(tags=["pooling"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIError, "description": "OpenAI-style error"} for code in (400, 401, 404, 413, 429, 500, 503)}


def _encode(values: list[float], body: Encoded) -> list[float] | str:
    """A vector as floats, or as vLLM's base64 (the bytes of the array in ``embed_dtype`` and ``endianness``)."""
    if body.encoding_format == "float":
        return values
    order = {"native": "=", "little": "<", "big": ">"}[body.endianness]
    kind = {"float32": "f4", "float16": "f2"}[body.embed_dtype]
    return base64.b64encode(np.asarray(values, dtype=order + kind).tobytes()).decode()


def _usage(jobs: list[Job], prompts: list[Any]) -> PoolingUsage:
    tokens = prompt_tokens(jobs, prompts)
    return PoolingUsage(prompt_tokens=tokens, total_tokens=tokens)


async def _pool(sup: SupervisorDep, principal: PrincipalDep, request: Request, t: Target, body: Any,
                task: str, **params: Any) -> tuple[list[Job], list[Any]]:
    prompts = await prompts_of(t, body, body.inputs(), sup.settings.max_prompt_chars)
    jobs = await run(sup, request, plan(sup, principal, t, body, prompts, task, **params))
    return jobs, prompts


@router.post("/v1/embeddings", response_model=ListResponse, responses=ERRORS)
async def embeddings(body: EmbeddingRequest, request: Request, sup: SupervisorDep,
                     principal: PrincipalDep) -> ListResponse:
    """OpenAI's embeddings: one vector per input (``dimensions``: a Matryoshka model's shorter vector)."""
    t = target(sup, body.model)
    require_task(t, "embed", "Embeddings API")
    jobs, prompts = await _pool(sup, principal, request, t, body, "embed", dimensions=body.dimensions)
    data = [EmbeddingData(index=i, embedding=_encode(list(job.pooled), body)) for i, job in enumerate(jobs)]
    return ListResponse(id=response_id(request, body.request_id, "embd", jobs[0].id), created=int(jobs[0].created_at),
                        model=t.name, data=data, usage=_usage(jobs, prompts), llmsup=info(jobs[0]))


@router.post("/pooling", response_model=ListResponse, responses=ERRORS)
async def pooling(body: PoolingRequest, request: Request, sup: SupervisorDep, principal: PrincipalDep) -> ListResponse:
    """The pooler's raw output per input, with the model's own task (another ``task``: vLLM's 400)."""
    t = target(sup, body.model)
    default = str(t.model.pooling.get("pooling_task") or "") if t.model is not None else ""
    model = require_task(t, default or "embed", "Pooling API")
    task = body.task or default
    if task != default:  # vLLM's server pools with the model's own task only
        tasks = tuple(model.tasks or ())
        raise OpenAIHTTPError(400, f"Try switching the model's pooling_task via `PoolerConfig(task=\"{task}\")`"
                              if task in tasks else f"Unsupported task: {task!r} Supported tasks: {tasks}", param="task")
    jobs, prompts = await _pool(sup, principal, request, t, body, task, dimensions=body.dimensions)

    def out(job: Job) -> Any:
        data = rows(job)
        return [_encode(row, body) for row in data] if len(job.pooled_shape) == 2 else _encode(data, body)

    data = [PoolingData(index=i, data=out(job)) for i, job in enumerate(jobs)]
    return ListResponse(id=response_id(request, body.request_id, "pool", jobs[0].id), created=int(jobs[0].created_at),
                        model=t.name, data=data, usage=_usage(jobs, prompts), llmsup=info(jobs[0]))


@router.post("/classify", response_model=ListResponse, responses=ERRORS)
async def classify(body: ClassificationRequest, request: Request, sup: SupervisorDep,
                   principal: PrincipalDep) -> ListResponse:
    """Class probabilities per input, with the likeliest class's label (the model's ``id2label``)."""
    t = target(sup, body.model)
    model = require_task(t, "classify", "Classification API")
    jobs, prompts = await _pool(sup, principal, request, t, body, "classify")
    labels: dict[str, str] = dict(model.pooling.get("labels") or {})
    data = []
    for i, job in enumerate(jobs):
        probs = list(job.pooled)
        best = max(range(len(probs)), key=probs.__getitem__) if probs else 0
        data.append(ClassificationData(index=i, label=labels.get(str(best)), probs=probs, num_classes=len(probs)))
    return ListResponse(id=response_id(request, body.request_id, "classify", jobs[0].id),
                        created=int(jobs[0].created_at), model=t.name, data=data, usage=_usage(jobs, prompts),
                        llmsup=info(jobs[0]))


async def _scores(sup: SupervisorDep, principal: PrincipalDep, request: Request, t: Target, body: Any,
                  first: list[str], second: list[str], api: str) -> tuple[list[float], int, list[Job]]:
    """Scores of the pairs (one to one, one to many, many to many of equal length), the prompt tokens, the jobs."""
    if not second:
        return [], 0, []
    if len(first) != 1 and len(first) != len(second):
        raise OpenAIHTTPError(400, "Input lengths must be either 1:1, 1:N or N:N", param="text_1")
    pairs = [(first[0] if len(first) == 1 else first[i], doc) for i, doc in enumerate(second)]
    task = str(t.model.pooling.get("pooling_task") or "") if t.model is not None else ""
    model = require_task(t, task or "embed", api)
    if task == "embed":  # a bi-encoder: the cosine similarity of the two embeddings
        texts = list(dict.fromkeys([a for a, _ in pairs] + [b for _, b in pairs]))
        prompts = await prompts_of(t, body, list(texts), sup.settings.max_prompt_chars)
        jobs = await run(sup, request, plan(sup, principal, t, body, prompts, "embed"))
        vectors = {text: list(job.pooled) for text, job in zip(texts, jobs, strict=True)}
        return [_cosine(vectors[a], vectors[b]) for a, b in pairs], prompt_tokens(jobs, prompts), jobs
    if task != "classify":
        raise OpenAIHTTPError(400, "This model does not support the Scoring API.", param="model")
    if int(model.pooling.get("num_labels") or 0) != 1:
        raise OpenAIHTTPError(400, "Scoring API is only enabled for num_labels == 1.", param="model")
    tok = await tokenizer_for(t.model)
    limit = sup.settings.max_prompt_chars
    if any(len(a) + len(b) > limit for a, b in pairs):
        raise OpenAIHTTPError(400, f"a pair longer than {limit} characters (max_prompt_chars)", param="documents")
    prompts = await asyncio.to_thread(pair_prompts, tok, pairs, body, model)
    jobs = await run(sup, request, plan(sup, principal, t, body, prompts, "classify"))
    return [job.pooled[0] if job.pooled else math.nan for job in jobs], prompt_tokens(jobs, prompts), jobs


def _cosine(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norm = float(np.linalg.norm(va) * np.linalg.norm(vb))
    return float(va @ vb / norm) if norm else 0.0


@router.post("/score", response_model=ListResponse, responses=ERRORS)
@router.post("/v1/score", response_model=ListResponse, responses=ERRORS, include_in_schema=False)
async def score(body: ScoreRequest, request: Request, sup: SupervisorDep, principal: PrincipalDep) -> ListResponse:
    """vLLM's score: one score per pair (``queries``/``documents``, ``text_1``/``text_2`` or ``data_1``/``data_2``)."""
    try:
        first, second = body.sides()
    except ValueError as exc:
        raise OpenAIHTTPError(400, str(exc), param="documents") from None
    t = target(sup, body.model)
    values, tokens, jobs = await _scores(sup, principal, request, t, body, first, second, "Score API")
    data = [ScoreData(index=i, score=v) for i, v in enumerate(values)]
    rid = response_id(request, body.request_id, "score", jobs[0].id if jobs else "empty")
    return ListResponse(id=rid, created=int(jobs[0].created_at) if jobs else 0, model=t.name, data=data,
                        usage=PoolingUsage(prompt_tokens=tokens, total_tokens=tokens),
                        llmsup=info(jobs[0]) if jobs else None)


@router.post("/rerank", response_model=RerankResponse, responses=ERRORS)
@router.post("/v1/rerank", response_model=RerankResponse, responses=ERRORS, include_in_schema=False)
@router.post("/v2/rerank", response_model=RerankResponse, responses=ERRORS, include_in_schema=False)
async def rerank(body: RerankRequest, request: Request, sup: SupervisorDep, principal: PrincipalDep) -> RerankResponse:
    """The documents by relevance to the query, best first (``top_n``: only so many; 0: all)."""
    t = target(sup, body.model)
    values, tokens, jobs = await _scores(sup, principal, request, t, body, [body.query], list(body.documents),
                                         "Rerank (Score) API")
    order = sorted(range(len(values)), key=lambda i: values[i], reverse=True)
    if body.top_n:
        order = order[:body.top_n]
    results = [RerankResult(index=i, document=RerankDocument(text=body.documents[i]), relevance_score=values[i])
               for i in order]
    rid = response_id(request, body.request_id, "rerank", jobs[0].id if jobs else "empty")
    return RerankResponse(id=rid, model=t.name, usage=RerankUsage(prompt_tokens=tokens, total_tokens=tokens),
                          results=results, llmsup=info(jobs[0]) if jobs else None)
