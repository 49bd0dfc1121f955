"""Tool calls and reasoning in a chat answer, found by vLLM's own parsers (``--tool-call-parser``,
``--reasoning-parser``), in the web process as vLLM's API server runs them.

The server-wide part (:class:`ChatParsing`) is the parser class vLLM's ``ParserManager`` composes from the
names, checked against the tokenizer once (a parser that cannot find its tokens stops nothing: the log says
so and tool requests are refused with vLLM's message). Per request (:class:`RequestParsing`), as vLLM's chat
serving does: the availability checks and their messages (``"auto"`` needs ``--enable-auto-tool-choice`` and a
parser; ``"required"`` or a named function needs a parser); the parser's ``adjust_request``, whose structured
output (the JSON schema of the forced calls) constrains the engine; ``parse`` of a whole answer into
reasoning, content and tool calls; and one stateful ``parse_delta`` per streamed choice. The answer's
``finish_reason`` becomes ``tool_calls`` where vLLM's does (auto calls, or ``"required"`` ended by a stop).
vLLM is imported only when a parser is configured (seconds), in a thread, at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from llmsup.engines.protocol import Structured
from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.openai_schemas import ChatCompletionRequest, NamedToolChoice

log = logging.getLogger("llmsup.web")


def bad(message: str, param: str | None = None) -> OpenAIHTTPError:
    return OpenAIHTTPError(400, message, param=param)


@dataclass(frozen=True)
class ParserNames:
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    enable_auto_tool_choice: bool = False

    @property
    def any(self) -> bool:
        return bool(self.tool_call_parser or self.reasoning_parser)


class ChatParsing:
    """vLLM's composed parser class for the served tokenizer (None parts: not configured)."""

    def __init__(self, names: ParserNames, tokenizer: Any) -> None:
        self.names = names
        self.tokenizer = tokenizer
        self.parser_cls: Any = None
        self.error: str | None = None
        if not names.any:
            return
        try:
            from llmsup.engines.torch_compat import hide_mismatched_extensions

            hide_mismatched_extensions()
            from vllm.parser import ParserManager

            self.parser_cls = ParserManager.get_parser(
                tool_parser_name=names.tool_call_parser, reasoning_parser_name=names.reasoning_parser,
                enable_auto_tools=names.enable_auto_tool_choice, tokenizer=tokenizer)
        except (ImportError, TypeError, ValueError, KeyError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("the chat parsers cannot be used (%s): tool and reasoning parsing is off", self.error)

    @property
    def tool_parser_cls(self) -> Any:
        return getattr(self.parser_cls, "tool_parser_cls", None)

    @property
    def auto_tools(self) -> bool:
        return self.names.enable_auto_tool_choice and self.tool_parser_cls is not None

    def for_request(self, body: ChatCompletionRequest) -> RequestParsing | None:
        """The request's parsing, after vLLM's availability checks (a 400 with its message); None when the
        answer is plain content."""
        choice = body.tool_choice
        if self.error is not None and (choice not in (None, "none") or self.names.reasoning_parser):
            raise bad(f"the server's chat parsers are unavailable: {self.error}", "tool_choice")
        if choice not in (None, "none") and self.tool_parser_cls is None:
            if choice == "auto" and not self.names.enable_auto_tool_choice:
                raise bad('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
                          "tool_choice")
            if choice != "auto":
                desc = f'function "{choice.function.name}"' if isinstance(choice, NamedToolChoice) else f'"{choice}"'
                raise bad(f"tool_choice={desc} requires --tool-call-parser to be set", "tool_choice")
        if self.parser_cls is None:
            return None
        return RequestParsing(self, _vllm_request(body))


def _vllm_request(body: ChatCompletionRequest) -> Any:
    """vLLM's own request object, which its parsers read (tools, tool_choice, parallel_tool_calls...)."""
    from pydantic import ValidationError
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as VLLMChatRequest

    data: dict[str, Any] = {
        "messages": [m.model_dump(exclude_none=True, by_alias=True) for m in body.messages],
        "tools": body.tool_dicts(), "tool_choice": body.tool_choice if not isinstance(body.tool_choice, NamedToolChoice)
        else body.tool_choice.model_dump(), "parallel_tool_calls": body.parallel_tool_calls,
        "include_reasoning": body.include_reasoning, "chat_template_kwargs": body.chat_template_kwargs,
        "stream": bool(body.stream), "skip_special_tokens": body.skip_special_tokens,
    }
    try:
        return VLLMChatRequest.model_validate({k: v for k, v in data.items() if v is not None})
    except (ValidationError, ValueError) as exc:
        raise bad(str(exc).splitlines()[0][:500]) from None


class RequestParsing:
    """One request's parsers: the engine constraint they ask for, whole answers, streamed deltas."""

    def __init__(self, server: ChatParsing, vreq: Any) -> None:
        self.server = server
        self.vreq = vreq
        self.named = isinstance(vreq.tool_choice, dict) or hasattr(vreq.tool_choice, "function")
        self.required = vreq.tool_choice == "required"

    def new_parser(self) -> Any:
        return self.server.parser_cls(self.server.tokenizer, self.vreq.tools,
                                      chat_template_kwargs=self.vreq.chat_template_kwargs or {})

    def structured(self) -> Structured | None:
        """The constraint the parsers put on generation (forced tool calls: their JSON schema), if any."""
        before = self.vreq.structured_outputs
        self.vreq = self.new_parser().adjust_request(self.vreq)
        so = self.vreq.structured_outputs
        if so is None or so is before:
            return None
        if so.structural_tag is not None:
            return Structured("structural_tag", so.structural_tag)
        if so.json is not None:
            return Structured("json", so.json if isinstance(so.json, str) else json.dumps(so.json))
        if so.regex is not None:
            return Structured("regex", so.regex)
        if so.grammar is not None:
            return Structured("grammar", so.grammar)
        return Structured("json_object") if so.json_object else None

    def message(self, text: str, token_ids: tuple[int, ...], finish: str) -> tuple[dict[str, Any], str]:
        """The assistant message of a whole answer (content, reasoning, tool_calls) and its finish_reason."""
        parser = self.new_parser()
        reasoning, content, calls = parser.parse(text, self.vreq, enable_auto_tools=self.server.auto_tools,
                                                 model_output_token_ids=list(token_ids))
        if not self.vreq.include_reasoning:
            reasoning = None
        tool_calls: list[dict[str, Any]] = []
        if self.named or self.required:
            content = content or ""
            tool_calls = [_call(tc) for tc in calls or ()]
        elif self.vreq.tool_choice == "auto" and self.vreq.tools and self.server.auto_tools and calls:
            tool_calls = [_call(tc) for tc in calls]
        if self.vreq.parallel_tool_calls is False:
            tool_calls = tool_calls[:1]
        if finish == "stop" and ((tool_calls and not self.named) or self.required):
            finish = "tool_calls"
        out: dict[str, Any] = {"content": content, "reasoning": reasoning, "reasoning_content": reasoning}
        if tool_calls:
            out["tool_calls"] = tool_calls
        return out, finish

    def streamer(self, prompt_ids: list[int]) -> Streamer:
        """A parser for one streamed choice; ``prompt_ids``: the rendered prompt's ids (whether the reasoning is
        still open where the prompt ends)."""
        return Streamer(self, self.new_parser(), prompt_ids)


def _call(tc: Any) -> dict[str, Any]:
    from vllm.renderers.chat_utils import make_tool_call_id

    return {"id": tc.id or make_tool_call_id(), "type": "function",
            "function": {"name": tc.name, "arguments": tc.arguments}}


class Streamer:
    """One streamed choice: each token's text (and id) -> the delta vLLM would send (None: nothing yet)."""

    def __init__(self, request: RequestParsing, parser: Any, prompt_ids: list[int]) -> None:
        self.request = request
        self.parser = parser
        self.prompt_ids = prompt_ids
        self.tools_streamed = False
        self.calls_sent = 0

    def delta(self, text: str, ids: list[int], finished: bool) -> dict[str, Any] | None:
        message = self.parser.parse_delta(delta_text=text, delta_token_ids=ids, request=self.request.vreq,
                                          prompt_token_ids=self.prompt_ids, finished=finished)
        if message is None:
            return None
        out: dict[str, Any] = message.model_dump(exclude_none=True)
        if message.tool_calls:
            self.tools_streamed = True
            if self.request.vreq.parallel_tool_calls is False:
                out["tool_calls"] = [c for c in out["tool_calls"] if c.get("index", 0) == 0]
        if "reasoning" in out:
            if not self.request.vreq.include_reasoning:
                del out["reasoning"]
            else:
                out["reasoning_content"] = out["reasoning"]
        return out

    def finish(self, finish: str) -> str:
        if finish == "stop" and self.tools_streamed and not self.request.named:
            return "tool_calls"
        return finish


_CACHE: dict[tuple[ParserNames, int], ChatParsing] = {}
_LOCK = asyncio.Lock()


async def parsing_for(names: ParserNames, tokenizer: Any) -> ChatParsing:
    """The server's parsing for this tokenizer, built once (in a thread: it imports vLLM)."""
    key = (names, id(tokenizer))
    if key not in _CACHE:
        async with _LOCK:
            if key not in _CACHE:
                _CACHE[key] = await asyncio.to_thread(ChatParsing, names, tokenizer)
    return _CACHE[key]
