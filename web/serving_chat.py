"""``/v1/chat/completions``: messages rendered by the chat template, one job per choice, the answers parsed by
vLLM's tool-call and reasoning parsers when the server names them (``web/chat_parsing.py``), streamed or whole.

As vLLM's chat serving: a request's own ``chat_template`` only with ``trust_request_chat_template``; image
content parts only for a multimodal model (else vLLM's message; ``web/media.py``), carried to the engines as data
URLs with the model's placeholders in the prompt; tools reach the template; ``"required"`` and a
named function are forced through the structured output the tool parser asks for; ``echo`` prepends the last
message when it is the assistant's; ``finish_reason`` is ``tool_calls`` where vLLM's is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Request, Response

from llmsup.engines.protocol import TokenLogprob
from llmsup.supervisor.port import ControlPlane
from llmsup.web.auth import Principal
from llmsup.web.chat import ChatInput, render_chat, template_for
from llmsup.web.chat_parsing import ParserNames, RequestParsing, Streamer, parsing_for
from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.live import stream_slot
from llmsup.web.media import chat_images
from llmsup.web.openai_format import chat_logprobs, finish_reason, info, prompt_logprobs_out, usage
from llmsup.web.openai_jobs import check_model, prompt_ids, response_id, stream, submit, wait_all
from llmsup.web.openai_params import plan_jobs
from llmsup.web.openai_responses import AssistantMessage, ChatChoice, ChatCompletionResponse
from llmsup.web.openai_schemas import ChatCompletionRequest
from llmsup.web.tokens import HFTokenizer, pool_for, pool_settings, served_model, tokenizer_for

UNTRUSTED_TEMPLATE = ("Chat template is passed with request, but --trust-request-chat-template is not set. "
                      "Refused request with untrusted chat template.")


def parser_names(sup: ControlPlane) -> ParserNames:
    s = sup.settings
    return ParserNames(getattr(s, "tool_call_parser", None), getattr(s, "reasoning_parser", None),
                       bool(getattr(s, "enable_auto_tool_choice", False)))


def check_messages_size(body: ChatCompletionRequest, limit: int) -> None:
    """The messages' size, before rendering (it bounds the rendering's work)."""
    if sum(len(m.text) for m in body.messages) > limit:
        raise OpenAIHTTPError(400, f"messages longer than {limit} characters in all (max_prompt_chars)",
                              param="messages")


class ChatServing:
    """One chat request, from its body to its answer."""

    def __init__(self, sup: ControlPlane, principal: Principal) -> None:
        self.sup = sup
        self.principal = principal

    async def create(self, body: ChatCompletionRequest, request: Request, response: Response) -> Any:
        sup = self.sup
        model, adapter = check_model(sup, body.model)
        pool = pool_for(sup, body.model)
        served = served_model(sup, pool)
        tok = await tokenizer_for(served)
        hf = tok.tok if isinstance(tok, HFTokenizer) else None
        if body.chat_template is not None and not sup.settings.trust_request_chat_template:
            raise OpenAIHTTPError(400, UNTRUSTED_TEMPLATE, param="chat_template")
        images = await chat_images(body.messages, served, pool_settings(sup, pool).model_options())
        if images and body.use_beam_search:
            raise OpenAIHTTPError(400, "beam search does not take images", param="use_beam_search")
        parsing = (await parsing_for(parser_names(sup), hf)).for_request(body)
        forced = parsing.structured() if parsing is not None else None
        chat = ChatInput(body.messages, body.add_generation_prompt, bool(body.continue_final_message),
                         dict(body.chat_template_kwargs or {}), body.tool_dicts(), body.chat_template,
                         served.image_placeholders if images and served else ())
        check_messages_size(body, sup.settings.max_prompt_chars)
        prompt = await render_chat(template_for(sup, hf, pool), chat)
        plan = await plan_jobs(sup, self.principal, body, [prompt], request.app.state.schema_checker,
                               add_special_tokens=bool(body.add_special_tokens), forced=forced,
                               token_ids=parsing is not None, lora=adapter.params() if adapter else None,
                               images=images)
        release = stream_slot(request, self.principal) if body.stream else None
        jobs = submit(sup, plan, release)
        rid = response_id(request, body.request_id, "chatcmpl", jobs[0].id)
        last = body.messages[-1]
        echo = last.text if body.echo and last.role == "assistant" else ""
        k = 1 << 30 if body.top_logprobs == -1 else (body.top_logprobs or 0)  # -1: every alternative there is
        as_ids = bool(body.return_tokens_as_token_ids)
        if body.stream:
            streamers: dict[int, Streamer] = {}

            def make(index: int, text: str, finish: str | None = None, role: bool = False,
                     entries: Sequence[TokenLogprob] = (), ids: Sequence[int] = (), offset: int = 0) -> dict[str, Any]:
                delta: dict[str, Any] = {"role": "assistant", "content": text} if role else (
                    {"content": text} if text else {})
                if parsing is not None and not role and index >= 0:
                    streamer = streamers.get(index) or streamers.setdefault(
                        index, parsing.streamer(list(plan.prompt_of(index).token_ids)))
                    delta = streamer.delta(text, list(ids), finish is not None) or {}
                    finish = streamer.finish(finish) if finish is not None else None
                choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
                if body.logprobs and entries:
                    choice["logprobs"] = chat_logprobs(entries, k, as_ids).model_dump()
                if body.return_token_ids and ids:
                    choice["token_ids"] = list(ids)
                return {"id": rid, "object": "chat.completion.chunk",
                        "created": int(jobs[0].created_at), "model": model, "choices": [choice]}

            head = [make(i, "", role=True) for i in range(len(jobs))]
            head += [_echo_chunk(make(i, "", role=True), echo) for i in range(len(jobs))] if echo else []
            return stream(sup, request, plan, jobs, make, body, head, release, need_ids=parsing is not None)
        response.headers["X-Llmsup-Job-Id"] = jobs[0].id
        done = await wait_all(sup, request, [j.id for j in jobs])
        choices = []
        for i, job in enumerate(done):
            message, finish = _message(parsing, job.output, job.token_ids, finish_reason(job))
            if echo:
                message.content = echo + (message.content or "")
            choices.append(ChatChoice(
                index=i, message=message, logprobs=chat_logprobs(job.logprobs, k, as_ids) if body.logprobs else None,
                finish_reason=finish, token_ids=list(job.token_ids) if body.return_token_ids else None,
                llmsup=info(job) if len(done) > 1 else None))
        return ChatCompletionResponse(
            id=rid, created=int(jobs[0].created_at), model=model, choices=choices,
            usage=usage(done, plan.n, [p.length for p in plan.prompts]), llmsup=info(done[0]),
            prompt_logprobs=prompt_logprobs_out(done[0].prompt_logprobs, body.prompt_logprobs is not None),
            prompt_token_ids=list(prompt_ids(plan, done, 0)) if body.return_token_ids else None,
        )


def _message(parsing: RequestParsing | None, text: str, token_ids: tuple[int, ...],
             finish: str | None) -> tuple[AssistantMessage, str | None]:
    if parsing is None or finish is None:
        return AssistantMessage(content=text), finish
    fields, finish = parsing.message(text, token_ids, finish)
    return AssistantMessage(**fields), finish


def _echo_chunk(chunk: dict[str, Any], echo: str) -> dict[str, Any]:
    """The echoed last message, in its own chunk after the role's (the parsers never see it)."""
    chunk["choices"][0]["delta"] = {"content": echo}
    return chunk
