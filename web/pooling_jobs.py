"""A pooling request -> its jobs, checked against the pool's model first; their outputs back as numbers.

Each input is one job of the pool that serves the request's ``model`` (``pooling_task`` in its parameters,
``max_tokens`` 1: the engine runs one forward pass), with the request's deadline, priority and owner: it is
queued, scheduled, interrupted at its deadline, retried and accounted like any other job. The model's facts come
from its engines (``describe()``: vLLM's supported tasks, embedding size, labels); a route the model does not
serve answers 404 with vLLM's message (``The model does not support Embeddings API``: ``vllm serve`` has no
such route for that model), a task the model does not run or a
parameter it does not take vLLM's own 400 (the engine's refusal, e.g. ``dimensions`` on a model without
Matryoshka embeddings). A prompt over the context is refused here with vLLM's message.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from llmsup.supervisor.core.jobs import Job
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.port import ControlPlane
from llmsup.web.auth import Principal
from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.limits import check_job_limits, check_priority
from llmsup.web.lora import Adapter
from llmsup.web.openai_jobs import check_model, submit, wait_all
from llmsup.web.openai_params import Plan, PromptIn
from llmsup.web.pooling_schemas import PoolingBase
from llmsup.web.tokens import HFTokenizer, ServedModel, Tokenizer, served_model, tokenizer_for

TASK_ROUTES = {"embed": "Embeddings API", "classify": "Classification API"}


@dataclass(frozen=True)
class Target:
    """The model a pooling request names: the name answers carry, its pool, its facts (None: no engine yet)."""

    name: str
    pool: str
    model: ServedModel | None
    adapter: Adapter | None


def target(sup: ControlPlane, name: str | None) -> Target:
    answer_name, adapter = check_model(sup, name)
    pools = sup.served_pools()
    pool = pools.get(name or "") or next(iter(pools.values()))
    return Target(answer_name, pool, served_model(sup, pool), adapter)


def unsupported(api: str) -> OpenAIHTTPError:
    """vLLM's answer to a route its model does not serve."""
    return OpenAIHTTPError(404, f"The model does not support {api}", code="not_found")


def require_task(t: Target, task: str, api: str) -> ServedModel:
    """The model's facts, when it runs ``task``: else a 404 (vLLM's message); a 503 before any of its engines is up (what it
    runs is not known yet)."""
    if t.model is None:
        raise OpenAIHTTPError(503, f"no engine of model {t.name!r} is up yet: retry", code="not_ready",
                              headers={"Retry-After": "5"})
    tasks = t.model.tasks
    if t.model.backend != "vllm" or (tasks is not None and task not in tasks):
        raise unsupported(api)
    return t.model


def _prompt(raw: str | list[int], body: PoolingBase, tok: Tokenizer | None, model: ServedModel | None) -> PromptIn:
    """The input as text and ids (tokenized here to count it against the context, as vLLM's renderer does)."""
    hf = tok if isinstance(tok, HFTokenizer) else None
    ids = list(raw) if isinstance(raw, list) else (hf.encode(raw, body.add_special_tokens) if hf is not None else None)
    if ids is None:
        return PromptIn(str(raw))
    keep = body.truncate_prompt_tokens
    context = model.max_model_len if model is not None else None
    if keep is not None and context is not None and keep > context:
        raise OpenAIHTTPError(400, "truncate_prompt_tokens value is greater than max_model_len. Please request a "
                                   "smaller truncation size.", param="truncate_prompt_tokens")
    if keep is not None:
        keep = (context or len(ids)) if keep == -1 else keep
        ids = ids[len(ids) - keep:] if body.truncation_side == "left" and keep < len(ids) else ids[:keep]
    if not ids:
        raise OpenAIHTTPError(400, "The prompt has no tokens", param="input")
    if hf is not None:
        bad = [i for i in ids if not 0 <= i < hf.vocab_size]
        if bad:
            raise OpenAIHTTPError(400, f"Token id {bad[0]} is out of vocabulary", param="input")
    if context is not None and len(ids) > context:
        raise OpenAIHTTPError(400, f"This model's maximum context length is {context} tokens. However, your prompt "
                                   f"contains {len(ids)} input tokens, which exceeds this limit even without any "
                                   "output tokens. Please reduce the length of the input prompt.", param="input",
                              code="context_length_exceeded")
    text = raw if isinstance(raw, str) else f"<{len(ids)} token ids>"
    return PromptIn(text, tuple(ids), len(ids))


async def prompts_of(t: Target, body: PoolingBase, raw: list[str | list[int]], limit: int) -> list[PromptIn]:
    """Every input as a prompt (off the loop: tokenizing may take a while), after the size checks that bound it."""
    for item in raw:
        if len(item) > limit:
            raise OpenAIHTTPError(400, f"input longer than {limit} {'token ids' if isinstance(item, list) else 'characters'}"
                                       " (max_prompt_chars)", param="input")
        if not item:
            raise OpenAIHTTPError(400, "an input must not be empty", param="input")
    tok = await tokenizer_for(t.model)
    return await asyncio.to_thread(lambda: [_prompt(item, body, tok, t.model) for item in raw])


def pair_prompts(tok: Tokenizer | None, pairs: list[tuple[str, str]], body: PoolingBase,
                 model: ServedModel | None) -> list[PromptIn]:
    """A cross-encoder's inputs: each (query, document) pair as the tokenizer joins a text pair, as vLLM does."""
    if not isinstance(tok, HFTokenizer):
        raise OpenAIHTTPError(400, "scoring with a cross-encoder needs the model's tokenizer here", param="model")
    out = []
    for first, second in pairs:
        ids = list(tok.tok(first, text_pair=second, add_special_tokens=body.add_special_tokens).input_ids)
        out.append(_prompt(ids, body, tok, model))
    return out


def plan(sup: ControlPlane, principal: Principal, t: Target, body: PoolingBase, prompts: list[PromptIn],
         task: str, **params: Any) -> Plan:
    """One job per prompt, in order; ``params``: further pooling parameters (``dimensions``)."""
    s = sup.settings
    priority = -body.priority  # vLLM: lower runs first; llmsup: higher runs first
    check_priority(s, priority, principal.admin, vllm_scale=True)
    lora = t.adapter.params() if t.adapter is not None else {}
    requests = []
    for prompt in prompts:
        check_job_limits(s, prompt.text, 1, body.deadline)
        extra = {"pooling_task": task, "prompt_token_ids": prompt.token_ids, "use_activation": body.use_activation,
                 **params, **lora}
        requests.append(JobRequest(prompt=prompt.text, max_tokens=1, deadline_s=body.deadline,
                                   queue_timeout_s=body.queue_timeout_s, priority=priority, owner=principal.owner,
                                   extra={k: v for k, v in extra.items() if v is not None and v != ()}, pool=t.pool))
    return Plan(prompts, requests, 1, t.model, None)


async def run(sup: ControlPlane, request: Request, p: Plan) -> list[Job]:
    """Submit the plan's jobs and wait for them all (the client leaving cancels them; a failure is the answer)."""
    jobs = submit(sup, p)
    return await wait_all(sup, request, [j.id for j in jobs])


def rows(job: Job) -> Any:
    """A job's pooled output as vLLM answers it: a vector, or one row per token."""
    values = list(job.pooled)
    if len(job.pooled_shape) == 2:
        width = job.pooled_shape[1]
        return [values[i:i + width] for i in range(0, len(values), width)]
    return values


def prompt_tokens(jobs: list[Job], prompts: list[PromptIn]) -> int:
    return sum(job.prompt_tokens or prompt.length or 0 for job, prompt in zip(jobs, prompts, strict=True))
