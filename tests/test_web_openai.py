"""The OpenAI-compatible routes, driven by the official ``openai`` SDK: end to end against a real ``llmsup serve``
(``server``), and in-process (``web``) for what never reaches an engine (models, validation, unknown model)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from support.inprocess import InProcessApp
from support.inprocess_server import Server
from support.live import job_status
from support.waiting import eventually

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def oai(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=60) as client:
        yield client


def llmsup_info(obj: object) -> dict:
    extra = getattr(obj, "model_extra", None) or {}
    return extra["llmsup"]


async def test_models(web: InProcessApp) -> None:
    async with web.openai() as oai:
        assert [m.id async for m in oai.models.list()] == ["sim"]


@pytest.mark.parametrize("server", ["inprocess", "real"], indirect=True)  # one HTTP contract, both servers
def test_completion_usage_and_finish_reasons(oai: openai.OpenAI, server: Server) -> None:
    resp = oai.completions.create(model="sim", prompt="alpha beta gamma", max_tokens=5)
    choice = resp.choices[0]
    assert choice.text == "alpha beta gamma alpha beta "
    assert choice.finish_reason == "length"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (3, 5, 8)
    info = llmsup_info(resp)
    assert info["status"] == "succeeded" and info["deadline_s"] == 30  # the server default
    assert resp.id == f"cmpl-{info['job_id']}"

    stopped = oai.completions.create(model="sim", prompt="alpha beta gamma", max_tokens=10, stop=["gamma"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == "alpha beta "

    echoed = oai.completions.create(model="sim", prompt="one two", max_tokens=2, echo=True)
    assert echoed.choices[0].text == "one twoone two "


def test_chat_completion(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(
        model="sim", max_tokens=4,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
    )
    msg = resp.choices[0].message
    assert msg.role == "assistant"
    assert msg.content == "System: be brief User: "  # the sim backend repeats the prompt's words
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 4
    assert resp.object == "chat.completion"


def test_an_image_part_is_a_clear_400_on_a_text_backend(oai: openai.OpenAI) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="sim", max_tokens=4, messages=[
            {"role": "user", "content": [{"type": "text", "text": "what is it?"}, image]}])
    assert "need a vision-language model served by the vllm backend" in err.value.message
    assert "the sim backend, which takes text only" in err.value.message


@pytest.mark.parametrize("server", ["inprocess", "real"], indirect=True)  # one HTTP contract, both servers
def test_completion_stream_matches_the_job(oai: openai.OpenAI, server: Server) -> None:
    stream = oai.completions.create(
        model="sim", prompt="a b c [sim:slow=0.01]", max_tokens=12, stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    info = llmsup_info(finals[0])
    with server.client() as c:
        job = job_status(c, info["job_id"])
    assert "".join(texts) == job["output"] == "a b c a b c a b c a b c "
    assert sum(1 for t in texts if t) >= 2  # it really streamed, piece by piece


@pytest.mark.parametrize("server", ["inprocess", "real"], indirect=True)  # one HTTP contract, both servers
def test_chat_stream(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="sim", max_tokens=6, stream=True, messages=[{"role": "user", "content": "x y [sim:slow=0.005]"}],
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == "User: x y Assistant: User: x "
    assert all(c.object == "chat.completion.chunk" for c in chunks)


@pytest.mark.parametrize("server", ["inprocess", "real"], indirect=True)  # one HTTP contract, both servers
def test_deadline_stops_a_runaway_with_a_clear_reason(oai: openai.OpenAI) -> None:
    resp = oai.completions.create(model="sim", prompt="spin [sim:hang]", max_tokens=100, extra_body={"timeout": 1})
    assert resp.choices[0].finish_reason == "timeout"
    info = llmsup_info(resp)
    assert info["status"] == "timed_out" and info["deadline_s"] == 1
    assert "deadline" in info["error"]
    assert resp.choices[0].text.startswith("spin")  # partial output kept

    chunks = list(oai.chat.completions.create(
        model="sim", stream=True, max_tokens=100, messages=[{"role": "user", "content": "[sim:hang]"}],
        extra_body={"deadline_s": 1},
    ))
    assert chunks[-1].choices[0].finish_reason == "timeout"
    assert llmsup_info(chunks[-1])["status"] == "timed_out"


def test_vllm_extension_fields_reach_the_job(oai: openai.OpenAI, server: Server) -> None:
    resp = oai.completions.create(
        model="sim", prompt="p", max_tokens=3, seed=7, top_p=0.9,
        extra_body={"top_k": 5, "ignore_eos": True, "min_tokens": 2, "priority": -3, "repetition_penalty": 1.0},
    )
    with server.client() as c:
        job = job_status(c, llmsup_info(resp)["job_id"])
    expected = {"seed": 7, "top_p": 0.9, "top_k": 5, "ignore_eos": True, "min_tokens": 2, "max_tokens": 3}
    assert {k: job["params"][k] for k in expected} == expected
    assert job["priority"] == 3  # vLLM: lower runs first; llmsup: higher runs first


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"extra_body": {"use_beam_search": True}}, "use_beam_search"),
        ({"best_of": 2}, "best_of"),
        ({"extra_body": {"timeout": -1}}, "timeout"),
        ({"extra_body": {"deadline_s": 1, "timeout": 2}}, "not both"),
        ({"max_tokens": 10_000_000}, "max_tokens"),
        ({"logprobs": 21}, "greater than max allowed: 20"),
        ({"presence_penalty": 0.5}, "not supported by the sim backend"),
        ({"extra_body": {"stop_token_ids": [3]}}, "stop_token_ids: not supported by the sim backend"),
        ({"extra_body": {"structured_outputs": {"regex": "a+"}}}, "structured_outputs: not supported by the sim"),
        ({"prompt": "word " * 5000}, "maximum context length is 4096"),
        ({"max_tokens": 4095}, "'max_tokens' or 'max_completion_tokens' is too large"),
        ({"stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_invalid_requests_are_a_clear_400(oai: openai.OpenAI, kwargs: dict, needle: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model="sim", **{"prompt": "x y", "max_tokens": 2, **kwargs})
    assert needle in err.value.message
    assert err.value.body["type"] == "invalid_request_error"


def test_unknown_fields_are_ignored_with_a_warning(oai: openai.OpenAI, server: Server) -> None:  # noqa: F811
    extra = {"metadata": {"a": "b"}, "store": True, "service_tier": "auto", "guided_json": {}}
    resp = oai.chat.completions.create(model="sim", max_tokens=2, messages=[
        {"role": "user", "content": "hi there", "reasoning_content": "an extra key on a message"}], extra_body=extra)
    assert resp.choices[0].finish_reason == "length"
    assert "were present in the request but ignored" in server.log_path.read_text(errors="replace")


def test_native_jobs_route_keeps_422(server: Server) -> None:  # noqa: F811
    with server.client() as c:
        assert c.post("/v1/jobs", json={"prompt": "p", "bogus": 1}).status_code == 422
        assert c.post("/v1/completions", json={"prompt": "p", "max_tokens": "3"}).status_code == 400


def test_n_and_prompt_lists_are_one_job_per_choice(oai: openai.OpenAI, server: Server) -> None:  # noqa: F811
    resp = oai.completions.create(model="sim", prompt=["a b", "c d e"], n=2, max_tokens=3, logprobs=1)
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert [c.text for c in resp.choices] == ["a b a ", "a b a ", "c d e ", "c d e "]
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (2 + 3, 12)  # prompts counted once each
    jobs = {c.model_extra["llmsup"]["job_id"] for c in resp.choices}
    assert len(jobs) == 4
    lp = resp.choices[2].logprobs
    assert lp.tokens == ["c ", "d ", "e "] and lp.token_logprobs == [0.0, 0.0, 0.0] and lp.text_offset == [0, 2, 4]
    assert lp.top_logprobs[0] == {"c ": 0.0}

    chunks = list(oai.completions.create(model="sim", prompt="p q", n=3, max_tokens=4, stream=True,
                                         stream_options={"include_usage": True}))
    texts = ["", "", ""]
    finishes = []
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finishes.append(choice.index)
                assert choice.text  # the last token travels with the finish_reason, as with vLLM
    assert texts == ["p q p q "] * 3 and sorted(finishes) == [0, 1, 2]
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == 2


def test_chat_logprobs_and_stream_chunks(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model="sim", max_tokens=3, logprobs=True, top_logprobs=1,
                                       messages=[{"role": "user", "content": "u v"}])
    content = resp.choices[0].logprobs.content
    assert [c.token for c in content] == ["User: ", "u ", "v "] and content[0].top_logprobs[0].logprob == 0.0
    chunks = list(oai.chat.completions.create(model="sim", max_tokens=3, logprobs=True, stream=True,
                                              messages=[{"role": "user", "content": "u v"}],
                                              stream_options={"include_usage": True, "continuous_usage_stats": True}))
    with_lp = [c for c in chunks if c.choices and c.choices[0].logprobs]
    assert [c.choices[0].logprobs.content[0].token for c in with_lp] == ["User: ", "u ", "v "]
    assert all(c.usage is not None for c in chunks)
    assert chunks[-1].usage.completion_tokens == 3


def test_max_tokens_default_is_the_rest_of_the_context(oai: openai.OpenAI, server: Server) -> None:  # noqa: F811
    resp = oai.chat.completions.create(model="sim", messages=[{"role": "user", "content": "[sim:hang] a"}],
                                       extra_body={"timeout": 0.5})
    with server.client() as c:
        job = job_status(c, llmsup_info(resp)["job_id"])
    assert job["params"]["max_tokens"] == 4096 - 3  # "User: a Assistant:" is 3 words to the sim backend
    plain = oai.completions.create(model="sim", prompt="a b")
    assert plain.usage.completion_tokens == 16  # completions: 16 when left out, as OpenAI and vLLM


def test_vllm_serving_routes(server: Server) -> None:  # noqa: F811
    with server.client() as c:
        health = c.get("/health")
        assert health.status_code == 200 and health.content == b""
        assert c.get("/version").json()["version"]
        assert c.get("/load").json()["server_load"] >= 0
        refused = c.post("/tokenize", json={"prompt": "hello"})
        assert refused.status_code == 400 and "words" in refused.json()["error"]["message"]
        assert c.post("/detokenize", json={"tokens": [1]}).status_code == 400
        assert c.post("/tokenize", json={}).status_code == 400


async def test_unknown_model_is_404(web: InProcessApp) -> None:
    async with web.openai() as oai:
        with pytest.raises(openai.NotFoundError) as err:
            await oai.completions.create(model="gpt-nothing", prompt="x", max_tokens=1)
    assert err.value.code == "model_not_found"


def test_failed_job_is_a_500_with_the_job_error(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        oai.completions.create(model="sim", prompt="[sim:error]", max_tokens=1)
    assert err.value.code == "job_failed" and "scripted error" in err.value.message


@pytest.mark.parametrize("server", ["inprocess", "real"], indirect=True)  # one HTTP contract, both servers
def test_stream_disconnect_cancels_the_job(server: Server) -> None:
    with server.client() as c:
        body = {"model": "sim", "prompt": "runaway [sim:hang]", "max_tokens": 50, "stream": True, "timeout": 60}
        with c.stream("POST", "/v1/completions", json=body) as resp:
            job_id = resp.headers["x-llmsup-job-id"]
            lines = resp.iter_lines()
            assert next(lines).startswith("data: ")  # first chunk read, then the client goes away
        job = eventually(lambda: (j := job_status(c, job_id))["status"] in ("cancelled",) and j, 15, what="cancel")
        assert "client disconnected" in job["error"]


def test_non_stream_disconnect_cancels_the_job(server: Server) -> None:
    with server.client() as c:
        before = {j["id"] for j in c.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]}
        with pytest.raises(httpx.ReadTimeout):
            c.post("/v1/chat/completions", timeout=1.0, json={
                "messages": [{"role": "user", "content": "[sim:hang]"}], "max_tokens": 50, "timeout": 60})

        def cancelled() -> dict | None:
            new = [j for j in c.get("/v1/jobs", params={"limit": 1000}).json()["jobs"] if j["id"] not in before]
            return new[0] if new and new[0]["status"] == "cancelled" else None

        job = eventually(cancelled, 15, what="the abandoned job to be cancelled")
        assert "client disconnected" in job["error"]


async def test_native_jobs_take_the_same_sampling_fields(web: InProcessApp) -> None:
    body = {"prompt": "p", "max_tokens": 2, "top_k": 3, "seed": 1, "top_p": 0.5, "ignore_eos": True, "min_tokens": 1}
    job = (await web.http.post("/v1/jobs", json=body)).json()
    assert {k: job["params"][k] for k in ("top_k", "seed", "top_p", "ignore_eos", "min_tokens")} == {
        "top_k": 3, "seed": 1, "top_p": 0.5, "ignore_eos": True, "min_tokens": 1}


def test_chat_echo_and_continue_final_message(oai: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "tell me"}, {"role": "assistant", "content": "An apple a day"}]
    resp = oai.chat.completions.create(model="sim", max_tokens=2, messages=messages,
                                       extra_body={"echo": True, "continue_final_message": True,
                                                   "add_generation_prompt": False})
    assert resp.choices[0].message.content == "An apple a dayUser: tell "  # the sim repeats the open prompt's words
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="sim", max_tokens=2, messages=messages,
                                    extra_body={"continue_final_message": True, "add_generation_prompt": True})


def test_metrics_count_completions_and_their_outcomes(oai: openai.OpenAI, server: Server) -> None:
    oai.completions.create(model="sim", prompt="count me", max_tokens=3)
    with server.client() as c:
        text = c.get("/metrics").text
    assert re.search(r'^llmsup_http_requests_total\{method="POST",route="/v1/completions",status="200"\} [1-9]', text, re.M)
    assert re.search(r'^llmsup_job_outcomes_total\{status="succeeded"\} [1-9]', text, re.M)


LIVE = "a b c [sim:slow=0.1]"  # 0.1 s a token: 20 tokens run for 2 s


def read_while_running(server: Server, resp: object, enough: Callable[[list], bool]) -> list:
    """Chunks of a streamed answer: those that make ``enough`` true are read while every job of the request still
    runs (asked of ``/v1/jobs/{id}`` then), then the rest."""
    job_ids = resp.headers["x-llmsup-job-id"].split(",")  # type: ignore[attr-defined]
    chunks = iter(resp.parse())  # type: ignore[attr-defined]
    early = []
    for chunk in chunks:
        early.append(chunk)
        if enough(early):
            break
    with server.client() as c:
        assert [job_status(c, j)["status"] for j in job_ids] == ["running"] * len(job_ids)
    return early + list(chunks)


def logprob_chunks(chunks: list, index: int) -> list:
    return [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index and c.choices[0].logprobs]


def test_completion_stream_logprobs_arrive_live(oai: openai.OpenAI, server: Server) -> None:
    request = dict(model="sim", prompt=LIVE, max_tokens=20, n=2, logprobs=1, seed=5)
    with oai.completions.with_streaming_response.create(stream=True, **request) as resp:
        chunks = read_while_running(server, resp, lambda early: all(len(logprob_chunks(early, i)) >= 2 for i in (0, 1)))
    whole = oai.completions.create(**request)
    for i in (0, 1):
        mine = logprob_chunks(chunks, i)
        assert len(mine) == 20 and all(c.logprobs.tokens == [c.text] for c in mine)  # each token in its own chunk
        assert mine[-1].finish_reason == "length" and not any(c.finish_reason for c in mine[:-1])
        streamed = {key: [v for c in mine for v in getattr(c.logprobs, key)]
                    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
        assert streamed["text_offset"] == [2 * k for k in range(20)]  # counts on over the choice's text
        assert streamed == whole.choices[i].logprobs.model_dump()
    echoed = list(oai.completions.create(model="sim", prompt="p q", max_tokens=3, echo=True, logprobs=0, stream=True))
    assert [c.logprobs.text_offset for c in logprob_chunks(echoed, 0)] == [[3], [5], [7]]  # after the echoed "p q"


def test_chat_stream_logprobs_arrive_live(oai: openai.OpenAI, server: Server) -> None:
    request = dict(model="sim", max_tokens=20, n=2, logprobs=True, top_logprobs=1, seed=5,
                   messages=[{"role": "user", "content": LIVE}])
    with oai.chat.completions.with_streaming_response.create(stream=True, **request) as resp:
        chunks = read_while_running(server, resp, lambda early: all(len(logprob_chunks(early, i)) >= 2 for i in (0, 1)))
    whole = oai.chat.completions.create(**request)
    for i in (0, 1):
        mine = logprob_chunks(chunks, i)
        assert len(mine) == 20 and all([t.token for t in c.logprobs.content] == [c.delta.content] for c in mine)
        streamed = [t.model_dump() for c in mine for t in c.logprobs.content]
        assert streamed == [t.model_dump() for t in whole.choices[i].logprobs.content]
        assert "".join(t["token"] for t in streamed) == whole.choices[i].message.content
