"""vLLM's own tool-call and reasoning parsers on chat answers, as the web process runs them (no server: the
parsers, the tiny model's tokenizer and the request objects are the real ones)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from llmsup.engines.torch_compat import hide_mismatched_extensions
from llmsup.web.chat_parsing import ChatParsing, ParserNames
from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.openai_schemas import ChatCompletionRequest

pytestmark = [pytest.mark.real, pytest.mark.timeout(180)]  # transformers and vLLM: model libraries
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


@pytest.fixture(scope="module")
def tok(tiny_model: str) -> object:  # noqa: F811
    hide_mismatched_extensions()
    return AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)


def _body(**extra: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **extra})


def _stream(parsing: object, tok: object, text: str) -> list[dict]:
    streamer = parsing.streamer(tok.encode("hi"))  # type: ignore[attr-defined]
    ids = tok.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]
    deltas = [streamer.delta(tok.decode([t]), [t], i == len(ids) - 1) for i, t in enumerate(ids)]  # type: ignore[attr-defined]
    return [d for d in deltas if d]


def test_without_parsers_tools_are_refused_with_vllms_messages(tok: object) -> None:
    plain = ChatParsing(ParserNames(), tok)
    with pytest.raises(OpenAIHTTPError, match='"auto" tool choice requires --enable-auto-tool-choice'):
        plain.for_request(_body(tools=TOOLS))
    with pytest.raises(OpenAIHTTPError, match='tool_choice="required" requires --tool-call-parser'):
        plain.for_request(_body(tools=TOOLS, tool_choice="required"))
    assert plain.for_request(_body(tools=TOOLS, tool_choice="none")) is None  # plain content


def test_auto_tool_calls_whole_and_streamed(tok: object) -> None:
    parsing = ChatParsing(ParserNames("hermes", None, True), tok).for_request(_body(tools=TOOLS, stream=True))
    assert parsing is not None and parsing.structured() is None  # auto: the model is free
    message, finish = parsing.message("Let me look. " + CALL, (), "stop")
    assert finish == "tool_calls" and message["content"] == "Let me look. "
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    deltas = _stream(parsing, tok, "Let me look. " + CALL)
    calls = [c for d in deltas for c in d.get("tool_calls", ())]
    assert "".join(d.get("content", "") for d in deltas) == "Let me look. "
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"]
    assert json.loads("".join(c["function"].get("arguments", "") for c in calls)) == {"city": "Paris"}


def test_required_is_forced_through_the_parsers_structured_output(tok: object) -> None:
    parsing = ChatParsing(ParserNames("hermes", None, True), tok).for_request(
        _body(tools=TOOLS, tool_choice="required", parallel_tool_calls=False))
    assert parsing is not None
    forced = parsing.structured()
    assert forced is not None and forced.kind == "structural_tag" and "<tool_call>" in forced.spec
    message, finish = parsing.message(CALL + CALL, (), "stop")
    assert finish == "tool_calls" and len(message["tool_calls"]) == 1  # parallel_tool_calls=false: the first


def test_reasoning_parser_splits_reasoning_from_content(tok: object) -> None:
    text = "Here is my thought process: it is sunny Here is my response: Sunny."
    parsing = ChatParsing(ParserNames(None, "granite"), tok).for_request(_body())
    assert parsing is not None
    message, finish = parsing.message(text, (), "stop")
    assert (message["reasoning_content"].strip(), message["content"].strip(), finish) == ("it is sunny", "Sunny.", "stop")
    deltas = _stream(parsing, tok, text)
    assert "".join(d.get("reasoning_content", "") for d in deltas).strip() == "it is sunny"
    assert "".join(d.get("content", "") for d in deltas).strip() == "Sunny."
    hidden = ChatParsing(ParserNames(None, "granite"), tok).for_request(_body(include_reasoning=False))
    assert hidden is not None and hidden.message(text, (), "stop")[0]["reasoning"] is None


def test_an_unknown_parser_is_logged_not_fatal(tok: object) -> None:
    broken = ChatParsing(ParserNames("no-such-parser", None, True), tok)
    assert broken.error and broken.parser_cls is None
    with pytest.raises(OpenAIHTTPError, match="chat parsers are unavailable: TypeError"):
        broken.for_request(_body(tools=TOOLS))
    assert broken.for_request(_body()) is None
