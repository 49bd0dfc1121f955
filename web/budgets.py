"""Budgets of one OpenAI request: what its jobs store and what their logprobs return.

One request becomes up to 128 jobs (``n`` x prompts), each with its own copy of the prompt and parameters: 100,000
``allowed_token_ids`` in a 700 KB body would be ~90 MB of store writes and seconds of loop work. Both budgets are
checked on sizes the body already gives (no tokenizing), before any job exists; each refusal is a 400 naming the
budget and the setting that sets it.
"""

from __future__ import annotations

from typing import Any

from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.openai_schemas import SamplingRequest

ID_BYTES = 8  # a token id as stored: up to 6 digits and a separator
BIAS_BYTES = 24  # a logit_bias entry: an id and a float


def job_bytes(body: SamplingRequest, prompt: str | list[int]) -> int:
    """An estimate of what one job of this request stores: its prompt and its list parameters."""
    structured = body.structured_outputs or body.response_format
    spec = len(structured.model_dump_json()) if structured is not None else 0
    prompt_bytes = len(prompt) * ID_BYTES if isinstance(prompt, list) else len(prompt)
    return (prompt_bytes + spec + ID_BYTES * (len(body.allowed_token_ids or ()) + len(body.stop_token_ids or ()))
            + BIAS_BYTES * len(body.logit_bias or {}))


def check_budget(settings: Any, body: SamplingRequest, prompts: list[str | list[int]], n: int) -> None:
    """Refuse a request whose jobs would hold more than ``max_request_job_bytes`` together."""
    total = n * sum(job_bytes(body, p) for p in prompts)
    limit = settings.max_request_job_bytes
    if total > limit:
        raise OpenAIHTTPError(
            400, f"this request's {n * len(prompts)} jobs would hold ~{total} bytes of prompts and parameters "
            f"(a copy each), above the per-request budget of {limit} bytes (max_request_job_bytes): "
            "ask for fewer choices or send smaller parameters", param="n", code="request_budget_exceeded")


def check_logprob_budget(settings: Any, k: int | None, max_tokens: int, n: int, prompt_length: int | None,
                         prompt_logprobs: int | None) -> None:
    """Refuse a prompt's jobs whose logprob records (tokens x alternatives, prompt logprobs once) would pass
    ``max_request_logprobs``. Checked per prompt, with the prompt's choices together; ``k``: alternatives per token
    (-1: the whole vocabulary, of unknown size: not counted here, the model's ``max_logprobs`` bounds it)."""
    records = n * max_tokens * (k + 1) if k is not None and k >= 0 else 0
    if prompt_logprobs is not None and prompt_logprobs >= 0:
        records += (prompt_length or 0) * (prompt_logprobs + 1)
    limit = settings.max_request_logprobs
    if records > limit:
        raise OpenAIHTTPError(
            400, f"this request asks for up to {records} logprob records ({n} choices x {max_tokens} tokens x "
            f"{(k or 0) + 1} each, prompt logprobs included), above the per-request budget of {limit} "
            "(max_request_logprobs): ask for fewer tokens, choices or alternatives", param="logprobs",
            code="request_budget_exceeded")
