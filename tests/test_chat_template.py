"""The chat route renders messages with the tokenizer's own chat-template machinery, exactly as the tokenizer
would, with tools, tool calls and Jinja's loop controls; rendering refusals are client errors."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from llmsup.engines.chat_template import chat_info
from llmsup.supervisor.core.requests import InvalidRequest
from llmsup.web.chat import ChatInput, ModelTemplate, SimpleTemplate, build_conversation, detect_content_format
from llmsup.web.openai_schemas import ChatMessage

pytestmark = [pytest.mark.real, pytest.mark.timeout(120)]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
# a template in the style of tool-using models: tools listed, loop controls, tool calls' arguments as objects
TOOL_TEMPLATE = (
    "{% for t in tools or [] %}[tool] {{ t.function.name }}\n{% endfor %}"
    "{% for m in messages %}{% if m.role == 'stop-here' %}{% break %}{% endif %}"
    "[{{ m.role }}] {{ m.content }}{% for c in m.tool_calls or [] %}<call>{{ c.function.name }} "
    "{{ c.function.arguments.city }}</call>{% endfor %}{% if m.tool_call_id %} ({{ m.tool_call_id }}){% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
)


def _messages(raw: list[dict]) -> list[ChatMessage]:
    return [ChatMessage.model_validate(m) for m in raw]


def test_model_template_matches_the_tokenizer(tiny_model: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    info = chat_info(tok)
    expected = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    with_tok = ModelTemplate(info["chat_template"], tokenizer=tok)
    without = ModelTemplate(info["chat_template"], info["bos_token"], info["eos_token"])
    assert with_tok.render(ChatInput(_messages(MESSAGES))) == expected
    assert without.render(ChatInput(_messages(MESSAGES))) == expected


def test_tools_tool_calls_and_break_reach_the_template(tiny_model: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    history = [{"role": "user", "content": "weather?"},
               {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                   "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
               {"role": "stop-here", "content": "never rendered"}]
    text = ModelTemplate(TOOL_TEMPLATE, tokenizer=tok).render(ChatInput(_messages(history), tools=TOOLS))
    assert text == ("[tool] get_weather\n[user] weather?[assistant] <call>get_weather Paris</call>"
                    "[tool] sunny (call_1)[assistant]")  # trim_blocks, as Hugging Face renders


def test_a_request_template_and_template_kwargs(tiny_model: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    server = ModelTemplate("{{ messages[0].content }}", tokenizer=tok)
    own = "{{ greeting }} {{ messages[0].content }}{% if add_generation_prompt %}!{% endif %}"
    chat = ChatInput(_messages(MESSAGES[1:]), kwargs={"greeting": "Hi", "tokenize": True}, template=own)
    assert server.render(chat) == "Hi Hello there!"  # reserved names (tokenize) are not passed on


def test_content_formats() -> None:
    parts = _messages([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert build_conversation(parts, "string")[0]["content"] == "a\nb"
    assert build_conversation(parts, "openai")[0]["content"] == [{"type": "text", "text": "a"},
                                                                  {"type": "text", "text": "b"}]
    assert detect_content_format("{% for m in messages %}{{ m['content'] }}{% endfor %}") == "string"
    assert detect_content_format("{% for m in messages %}{% for p in m['content'] %}{{ p['text'] }}{% endfor %}"
                                 "{% endfor %}") == "openai"


def test_continue_final_message(tiny_model: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    template = ModelTemplate(chat_info(tok)["chat_template"], tokenizer=tok)
    messages = _messages([*MESSAGES, {"role": "assistant", "content": "The answer is"}])
    assert template.render(ChatInput(messages, continue_final_message=True)).endswith("The answer is")


def test_template_errors_are_client_errors() -> None:
    strict = ModelTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}ok")
    with pytest.raises(InvalidRequest, match="user first"):
        strict.render(ChatInput([ChatMessage(role="system", content="x")]))


def test_simple_template_without_a_model_template() -> None:
    text = SimpleTemplate().render(ChatInput(_messages([*MESSAGES, {"role": "critic", "content": "hm"}])))
    assert text.endswith("User: Hello there\nCritic: hm\nAssistant:")
