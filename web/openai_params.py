"""An OpenAI request -> the jobs that answer it, checked against the served model first.

``n`` choices and a list of prompts become one job per choice (choice ``i`` answers prompt ``i // n``), each
with the request's deadline: each choice is then scheduled, streamed, interrupted and retried like any job,
on whichever engine is free (a batched vLLM engine batches them anyway). With a ``seed``, choice ``j`` of a
prompt samples with ``seed + j``, so that the choices differ and the request stays reproducible.

Checks (each a 400 with OpenAI's error body, before any job exists): a feature the backend cannot honour
(its ``describe()`` lists them with the reason), logprobs above the model's ``max_logprobs``, a prompt over
the context, ``max_tokens`` past the context, an invalid JSON schema or regex, token ids out of the
vocabulary. ``max_tokens`` left out (chat; ``null`` on completions) is the rest of the context. A rendered chat prompt is
tokenized here without special tokens (the template places them, as vLLM does) and reaches the engine as ids.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

from llmsup.engines.generation_defaults import SAMPLING_KEYS
from llmsup.engines.protocol import Structured, TokenBias
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.port import ControlPlane
from llmsup.web.auth import Principal
from llmsup.web.budgets import check_budget, check_logprob_budget
from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.limits import check_job_limits, check_priority
from llmsup.web.openai_schemas import CompletionRequest, SamplingRequest
from llmsup.web.schema_check import SchemaChecker, SchemaTooComplex
from llmsup.web.tokens import HFTokenizer, ServedModel, Tokenizer, pool_for, served_model, tokenizer_for

# Prompts up to this many characters (or token ids) in all are read on the event loop, longer ones in a worker
# thread: a fast tokenizer takes ~0.34 us a character, the hop to a thread and back ~80 us (docs/benchmarks.md,
# "Throughput of short jobs"), so 256 characters cost about what the hop does.
INLINE_PROMPT_CHARS = 256


@dataclass(frozen=True)
class PromptIn:
    text: str
    token_ids: tuple[int, ...] = ()  # set when the engine must take the prompt as ids
    length: int | None = None  # in tokens, when a tokenizer is at hand


@dataclass(frozen=True)
class Plan:
    prompts: list[PromptIn]
    requests: list[JobRequest]  # one per choice, in choice order
    n: int
    model: ServedModel | None
    tokenizer: Tokenizer | None

    def prompt_of(self, choice: int) -> PromptIn:
        return self.prompts[choice // self.n]


def bad(message: str, param: str | None = None, code: str | None = None) -> OpenAIHTTPError:
    return OpenAIHTTPError(400, message, code=code, param=param)


def structured_of(body: SamplingRequest) -> Structured | None:
    """The request's structured-output constraint (``structured_outputs`` or ``response_format``), checked."""
    so = body.structured_outputs
    if so is not None:
        if so.json_ is not None:
            try:
                schema = json.loads(so.json_) if isinstance(so.json_, str) else so.json_
            except ValueError as exc:
                raise bad(f"structured_outputs.json is not valid JSON: {exc}", "structured_outputs.json") from None
            return Structured("json", _schema_text(schema, "structured_outputs.json"))
        if so.regex is not None:
            try:
                re.compile(so.regex)
            except re.error as exc:
                raise bad(f"invalid regex in structured_outputs: {exc}", "structured_outputs.regex") from None
            return Structured("regex", so.regex)
        if so.choice is not None:
            return Structured("choice", json.dumps(so.choice))
        if so.grammar is not None:
            return Structured("grammar", so.grammar)
        return Structured("json_object") if so.json_object else None
    rf = body.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return Structured("json_object")
    assert rf.json_schema is not None and rf.json_schema.schema_ is not None  # the schema checked it
    return Structured("json", _schema_text(rf.json_schema.schema_, "response_format.json_schema.schema"))


def _schema_text(schema: Any, param: str) -> str:
    if not isinstance(schema, dict):
        raise bad("a JSON schema must be an object", param)
    return json.dumps(schema)


async def checked_structured(body: SamplingRequest, checker: SchemaChecker) -> Structured | None:
    """:func:`structured_of`, its JSON schema checked in the checker's worker process (never on the loop)."""
    structured = structured_of(body)
    if structured is None or structured.kind != "json":
        return structured
    param = "structured_outputs.json" if body.structured_outputs is not None else "response_format.json_schema.schema"
    try:
        error = await checker.check(structured.spec)
    except SchemaTooComplex as exc:
        raise bad(str(exc), param) from None
    if error is not None:
        raise bad(f"invalid JSON schema: {error}", param)
    return structured


def features_used(body: SamplingRequest, token_prompts: bool) -> dict[str, str]:
    """Backend features this request needs -> the request field that needs it."""
    logprobs = body.sample_logprobs() is not None
    structured = body.structured_outputs is not None or bool(body.response_format and body.response_format.type != "text")
    penalised = (body.presence_penalty or 0) != 0 or (body.frequency_penalty or 0) != 0 or body.repetition_penalty not in (
        None, 1)
    needs = (
        ("penalties", "presence_penalty / frequency_penalty / repetition_penalty", penalised),
        ("min_p", "min_p", bool(body.min_p)),
        ("logit_bias", "logit_bias", bool(body.logit_bias)),
        ("stop_token_ids", "stop_token_ids", bool(body.stop_token_ids)),
        ("allowed_token_ids", "allowed_token_ids", bool(body.allowed_token_ids)),
        ("logprobs", "logprobs", logprobs),
        ("prompt_logprobs", "prompt_logprobs",
         body.prompt_logprobs is not None or (bool(getattr(body, "echo", False)) and logprobs)),
        ("structured_outputs", "response_format" if body.response_format else "structured_outputs", structured),
        ("token_prompts", "prompt", token_prompts),
        ("token_ids", "return_token_ids", bool(body.return_token_ids)),
    )
    return {feature: param for feature, param, needed in needs if needed}


def _check_model(body: SamplingRequest, model: ServedModel | None, token_prompts: bool, tok: Tokenizer | None) -> None:
    if model is None:
        return
    for feature, param in features_used(body, token_prompts).items():
        if feature in model.unsupported:
            raise bad(f"{param}: not supported by the {model.backend} backend: {model.unsupported[feature]}", param)
    for param, k in (("logprobs", body.sample_logprobs()), ("prompt_logprobs", body.prompt_logprobs)):
        wanted = _whole_vocabulary(k, tok)
        if wanted is not None and model.max_logprobs != -1 and (wanted == -1 or wanted > model.max_logprobs):
            raise bad(f"Requested {'sample' if param == 'logprobs' else 'prompt'} logprobs of {k}, which is greater "
                      f"than max allowed: {model.max_logprobs}", param)


def _check_beam_search(body: SamplingRequest, model: ServedModel | None) -> bool:
    """Whether the request asks for beam search (vLLM's, of width ``n``: choice ``j`` is the ``j``-th best beam),
    checked: the vllm backend only, and without what llmsup's beam search does not return."""
    if not body.use_beam_search:
        return False
    if model is not None and model.backend != "vllm":
        raise bad(f"use_beam_search: not supported by the {model.backend} backend: vLLM's beam search only",
                  "use_beam_search")
    for param, given in (("logprobs", body.sample_logprobs() is not None), ("prompt_logprobs", body.prompt_logprobs
                         is not None), ("structured_outputs", body.structured_outputs is not None or bool(
                         body.response_format and body.response_format.type != "text"))):
        if given:
            raise bad(f"{param} with use_beam_search is not supported here", param)
    return True


def _whole_vocabulary(k: int | None, tok: Tokenizer | None) -> int | None:
    """vLLM's ``-1``: as many alternatives as the vocabulary has tokens (-1 again when its size is unknown)."""
    if k != -1:
        return k
    return tok.vocab_size if isinstance(tok, HFTokenizer) else -1


def _prompt(raw: str | list[int], body: SamplingRequest, tok: Tokenizer | None, model: ServedModel | None,
            add_special_tokens: bool, limit: int) -> PromptIn:
    """The prompt as text (and ids where the engine must take ids); ``limit``: most token ids accepted."""
    hf = tok if isinstance(tok, HFTokenizer) else None
    ids: list[int] | None = list(raw) if isinstance(raw, list) else None
    text = raw if isinstance(raw, str) else ""
    if ids is None and hf is not None and (not add_special_tokens or body.truncate_prompt_tokens is not None):
        ids = hf.encode(text, add_special_tokens)
    if ids is not None and body.truncate_prompt_tokens is not None:
        keep = body.truncate_prompt_tokens
        if keep == -1:
            keep = model.max_model_len if model and model.max_model_len else len(ids)
        ids = ids[:keep] if body.truncation_side == "right" else ids[len(ids) - keep:] if keep < len(ids) else ids
    if ids is not None:
        if not ids:
            raise bad("the prompt has no tokens left", "prompt")
        if isinstance(raw, list) and len(ids) > limit:
            raise bad(f"prompt longer than {limit} token ids", "prompt")
        if hf is not None:
            try:
                text = hf.decode(ids)
            except ValueError as exc:
                raise bad(str(exc), "prompt") from None
        return PromptIn(text or f"<{len(ids)} token ids>", tuple(ids), len(ids))
    length = tok.count(text, add_special_tokens) if tok is not None else None
    return PromptIn(text, (), length)


def _max_tokens(body: SamplingRequest, prompt: PromptIn, model: ServedModel | None, default: int, limit: int) -> int:
    context = model.max_model_len if model else None
    if context is None or prompt.length is None:
        return body.max_tokens if body.max_tokens is not None else default
    if prompt.length >= context:
        raise bad(f"This model's maximum context length is {context} tokens. However, your prompt contains "
                  f"{prompt.length} input tokens, which leaves no room for output. Please reduce the length of "
                  "the input prompt.", "prompt", code="context_length_exceeded")
    room = context - prompt.length
    if body.max_tokens is None:
        return min(room, limit)
    if body.max_tokens > room:
        raise bad(f"'max_tokens' or 'max_completion_tokens' is too large: {body.max_tokens}. This model's maximum "
                  f"context length is {context} tokens and your request has {prompt.length} input tokens "
                  f"({body.max_tokens} > {context} - {prompt.length}).", "max_tokens",
                  code="context_length_exceeded")
    return body.max_tokens


def _logit_bias(body: SamplingRequest, tok: Tokenizer | None) -> tuple[TokenBias, ...]:
    try:
        bias = tuple(TokenBias(int(k), float(v)) for k, v in (body.logit_bias or {}).items())
    except ValueError:
        raise bad("logit_bias keys are token ids (decimal integers)", "logit_bias") from None
    vocab = tok.vocab_size if isinstance(tok, HFTokenizer) else None
    out_of_vocab = [b.token_id for b in bias if b.token_id < 0 or (vocab is not None and b.token_id >= vocab)]
    if out_of_vocab:
        raise bad(f"token_id(s) {out_of_vocab[:10]} in logit_bias are out of the vocabulary"
                  + (f" (size {vocab})" if vocab else ""), "logit_bias")
    return bias


async def plan_jobs(sup: ControlPlane, principal: Principal, body: SamplingRequest, raw_prompts: list[str | list[int]],
                    checker: SchemaChecker, add_special_tokens: bool = True, prompt_logprobs: int | None = None,
                    forced: Structured | None = None, token_ids: bool = False,
                    lora: dict[str, Any] | None = None, images: tuple[str, ...] = ()) -> Plan:
    """Check the request against the served model and build one job request per choice; ``forced``: a
    constraint that replaces the request's own (forced tool calls), ``token_ids``: the generated ids are needed
    (the chat parsers read them) whether or not the client asked for them, ``lora``: the adapter's parameters,
    ``images``: a multimodal chat's images (data URLs) for the engines.
    What may take long (the schema check, tokenizing, decoding ids) runs off the loop, after the size checks that
    bound it."""
    pool = pool_for(sup, body.model)  # the model is checked: its pool, else the first
    model = served_model(sup, pool)
    if model is not None and model.pooling_only:  # vLLM's server has no generation routes for a pooling model: 404
        api = "Completions API" if isinstance(body, CompletionRequest) else "Chat Completions API"
        raise OpenAIHTTPError(404, f"The model does not support {api}", code="not_found")
    tok = await tokenizer_for(model)
    token_prompts = any(isinstance(p, list) for p in raw_prompts) or (
        isinstance(tok, HFTokenizer) and (not add_special_tokens or body.truncate_prompt_tokens is not None))
    _check_model(body, model, token_prompts, tok)
    if lora and model is not None and model.backend != "vllm":
        raise bad(f"LoRA adapters are served by the vllm backend only, not {model.backend}", "model")
    beam = _check_beam_search(body, model)
    s = sup.settings
    for raw in raw_prompts:  # the length in characters (or ids) first: it bounds the tokenizer's work
        if len(raw) > s.max_prompt_chars:
            raise bad(f"prompt longer than {s.max_prompt_chars} {'token ids' if isinstance(raw, list) else 'characters'}"
                      " (max_prompt_chars)", "prompt")
    n = body.choices_per_prompt
    check_budget(s, body, raw_prompts, n)
    structured = forced or await checked_structured(body, checker)
    bias = _logit_bias(body, tok)
    priority = -(body.priority or 0)  # vLLM: lower runs first; llmsup: higher runs first
    check_priority(s, priority, principal.admin, vllm_scale=True)
    def read() -> list[PromptIn]:
        return [_prompt(p, body, tok, model, add_special_tokens, s.max_prompt_chars) for p in raw_prompts]

    # short prompts on the loop (a worker thread's hop costs more than tokenizing them), long ones off it
    prompts = read() if sum(len(p) for p in raw_prompts) <= INLINE_PROMPT_CHARS else await asyncio.to_thread(read)
    wanted_prompt_lps = _whole_vocabulary(body.prompt_logprobs if body.prompt_logprobs is not None else prompt_logprobs,
                                          tok)
    wanted_lps = _whole_vocabulary(body.sample_logprobs(), tok)
    sampled = sampling(body, model)
    requests: list[JobRequest] = []
    for prompt in prompts:
        max_tokens = _max_tokens(body, prompt, model, s.default_max_tokens, s.max_tokens_limit)
        check_job_limits(s, prompt.text, max_tokens, body.deadline, body.min_tokens)
        check_logprob_budget(s, wanted_lps, max_tokens, n, prompt.length, wanted_prompt_lps)
        for j in range(n):
            extra: dict[str, Any] = {
                "top_p": sampled["top_p"], "top_k": max(0, sampled["top_k"]) if sampled["top_k"] is not None else None,
                "seed": body.seed + j if body.seed is not None else None,
                "ignore_eos": body.ignore_eos, "min_tokens": body.min_tokens,
                "presence_penalty": sampled["presence_penalty"], "frequency_penalty": sampled["frequency_penalty"],
                "repetition_penalty": sampled["repetition_penalty"], "min_p": sampled["min_p"],
                "logit_bias": bias, "stop_token_ids": tuple(body.stop_token_ids or ()),
                "allowed_token_ids": tuple(body.allowed_token_ids or ()),
                "logprobs": wanted_lps,
                "prompt_logprobs": wanted_prompt_lps if j == 0 else None,  # one copy per prompt is enough
                "structured": structured, "prompt_token_ids": prompt.token_ids,
                "return_token_ids": bool(body.return_token_ids) or token_ids,
                "include_stop_str_in_output": body.include_stop_str_in_output,
                "skip_special_tokens": body.skip_special_tokens, **(lora or {}), "images": images or None,
                **({"beam_width": n, "beam_index": j, "length_penalty": body.length_penalty} if beam else {}),
            }
            requests.append(JobRequest(
                prompt=prompt.text, max_tokens=max_tokens, temperature=sampled["temperature"], stop=body.stops(),
                deadline_s=body.deadline, unbounded=True, queue_timeout_s=body.queue_timeout_s,
                priority=priority, owner=principal.job_owner, extra={k: v for k, v in extra.items() if v is not None},
                pool=pool,
            ))
    return Plan(prompts, requests, n, model, tok)


def sampling(body: SamplingRequest, model: ServedModel | None) -> dict[str, Any]:
    """The request's sampling values, each unset one from the model's ``generation_config.json`` (what vLLM's
    ``generation_config="auto"`` does; those the backend cannot apply left out), else vLLM's neutral default:
    temperature 1.0 (sampling: greedy only when asked with temperature 0), top_p 1.0, the others off."""
    defaults = dict(model.sampling_defaults) if model is not None else {}
    if model is not None and "penalties" in model.unsupported:
        defaults = {k: v for k, v in defaults.items() if not k.endswith("_penalty")}
    if model is not None and "min_p" in model.unsupported:
        defaults.pop("min_p", None)
    values: dict[str, Any] = {}
    for key in SAMPLING_KEYS:
        given = getattr(body, key)
        values[key] = given if given is not None else defaults.get(key)
    if values["temperature"] is None:
        values["temperature"] = 1.0
    return values


def completion_prompt_logprobs(body: CompletionRequest) -> int | None:
    """Echo with logprobs also returns the prompt's logprobs (vLLM: prompt_logprobs = logprobs)."""
    return body.logprobs if body.echo and body.logprobs is not None else None
