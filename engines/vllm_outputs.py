"""vLLM's request parameters and outputs, to and from llmsup's backend-neutral records.

:func:`sampling_params` builds a ``SamplingParams`` from :class:`GenParams` (penalties, ``min_p``,
``logit_bias``, ``stop_token_ids``, logprobs and structured outputs as vLLM 0.32 names them:
``structured_outputs=StructuredOutputsParams(...)``); :func:`token_logprobs` turns the logprobs of a
``CompletionOutput`` delta (or a request's prompt logprobs) into :class:`TokenLogprob` records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llmsup.engines.protocol import GenParams, RequestRejected, Structured, TokenLogprob, TopLogprob, clamp_logprob


def structured_outputs(structured: Structured | None) -> Any:
    """vLLM's ``StructuredOutputsParams`` for a constraint, or None."""
    if structured is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if structured.kind == "json":
        return StructuredOutputsParams(json=json.loads(structured.spec))
    if structured.kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if structured.kind == "regex":
        return StructuredOutputsParams(regex=structured.spec)
    if structured.kind == "choice":
        return StructuredOutputsParams(choice=list(json.loads(structured.spec)))
    if structured.kind == "structural_tag":
        return StructuredOutputsParams(structural_tag=structured.spec)
    return StructuredOutputsParams(grammar=structured.spec)


def sampling_params(params: GenParams) -> Any:
    """``vllm.SamplingParams`` for one request, streaming DELTA outputs."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=max(0, params.top_k),
        min_p=params.min_p,
        seed=params.seed,
        stop=list(params.stop) or None,
        stop_token_ids=list(params.stop_token_ids) or None,
        allowed_token_ids=list(params.allowed_token_ids) or None,
        ignore_eos=params.ignore_eos,
        min_tokens=params.min_tokens,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty,
        logit_bias={b.token_id: b.bias for b in params.logit_bias} or None,
        logprobs=params.logprobs,
        prompt_logprobs=params.prompt_logprobs,
        structured_outputs=structured_outputs(params.structured),
        include_stop_str_in_output=params.include_stop_str_in_output,
        skip_special_tokens=params.skip_special_tokens,
        output_kind=RequestOutputKind.DELTA,
    )


def engine_prompt(prompt: str, params: GenParams) -> Any:
    """What ``add_request`` takes: the text, or the token ids when the request gave them; with the request's
    images (vLLM's ``multi_modal_data``) for a multimodal model."""
    if not params.images:
        return {"prompt_token_ids": list(params.prompt_token_ids)} if params.prompt_token_ids else prompt
    given: dict[str, Any] = {"prompt_token_ids": list(params.prompt_token_ids)} if params.prompt_token_ids else {
        "prompt": prompt}
    return {**given, "multi_modal_data": {"image": load_images(params.images)}}


def load_images(urls: Sequence[str]) -> list[Any]:
    """The images of base64 data URLs, by vLLM's own loader (its errors are the request's: a 400). Nothing else is
    loaded here: the front end turned any allowed file into a data URL, and an engine reads no path a request gives."""
    from vllm.multimodal.media.connector import MediaConnector

    connector = MediaConnector()  # no allowed local path: a file URL is vLLM's own refusal
    images = []
    for url in urls:
        if not url.startswith("data:"):
            raise RequestRejected("an engine takes images as base64 data URLs only")
        try:
            images.append(connector.fetch_image(url))
        except (ValueError, RuntimeError, NotImplementedError, OSError) as exc:
            raise RequestRejected(str(exc)) from None
    return images


def _one(token_id: int, position: dict[int, Any] | None, k: int) -> TokenLogprob:
    if not position:
        return TokenLogprob(token_id, "", 0.0)
    chosen = position.get(token_id)
    ranked = sorted(position.items(), key=lambda item: item[1].rank if item[1].rank is not None else 1 << 30)
    top = tuple(TopLogprob(tid, lp.decoded_token or "", clamp_logprob(lp.logprob)) for tid, lp in ranked[:k])
    if chosen is None:
        return TokenLogprob(token_id, "", 0.0, 0, top)
    return TokenLogprob(token_id, chosen.decoded_token or "", clamp_logprob(chosen.logprob), chosen.rank or 0, top)


def token_logprobs(token_ids: Sequence[int], logprobs: Sequence[Any] | None, k: int | None) -> tuple[TokenLogprob, ...]:
    """One record per token: its logprob and the ``k`` likeliest tokens at its place (vLLM's dict per
    position holds the top-k and the token itself)."""
    if logprobs is None or k is None:
        return ()
    return tuple(_one(tid, pos, max(0, k)) for tid, pos in zip(token_ids, logprobs))


def prompt_logprobs(prompt_ids: Sequence[int], logprobs: Sequence[Any] | None, k: int | None) -> tuple[TokenLogprob, ...]:
    """Prompt logprobs of tokens 1.. (vLLM gives None for the first prompt token)."""
    if not logprobs or k is None:
        return ()
    return token_logprobs(list(prompt_ids)[1:], list(logprobs)[1:], k)
