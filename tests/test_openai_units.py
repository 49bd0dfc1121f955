"""Unit tests of the OpenAI surface's pieces: the wire and store forms of the new sampling fields and logprobs,
the OpenAI formatting of logprobs, request parsing (unknown fields, prompts)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmsup.engines import messages
from llmsup.engines.protocol import GenParams, Structured, TokenBias, TokenLogprob, TopLogprob
from llmsup.supervisor.core.jobs import Job
from llmsup.supervisor.store import SQLiteStore
from llmsup.web.openai_format import chat_logprobs, completion_logprobs, prompt_logprobs_out, usage
from llmsup.web.openai_params import features_used, structured_of
from llmsup.web.openai_schemas import ChatCompletionRequest, CompletionRequest

LP = (TokenLogprob(7, "a", -0.5, 1, (TopLogprob(7, "a", -0.5), TopLogprob(9, "b", -1.5))),
      TokenLogprob(9, "bc", -2.0, 2, (TopLogprob(7, "a", -0.1), TopLogprob(9, "bc", -2.0))))


def test_new_fields_cross_the_wire_and_the_store(tmp_path: Path) -> None:
    params = GenParams(max_tokens=3, presence_penalty=0.5, logit_bias=(TokenBias(3, -100.0),), stop_token_ids=(2,),
                       logprobs=2, prompt_logprobs=0, structured=Structured("regex", "[0-9]+"),
                       prompt_token_ids=(1, 2, 3), return_token_ids=True)
    spec = messages.decode_for_engine(messages.encode(messages.JobSpec("k#1", "p", params)))
    assert spec.params == params
    result = messages.JobResult("completed", "abc", 2, "length", logprobs=LP, token_ids=(7, 9), prompt_token_ids=(1,))
    assert messages.decode_for_supervisor(messages.encode(result)) == result
    store = SQLiteStore(tmp_path / "jobs.sqlite")
    job = store.add(Job(prompt="p", params=params, created_at=1.0))
    store.put(job.with_changes(logprobs=LP, prompt_logprobs=LP[:1], token_ids=(7, 9), prompt_token_ids=(1, 2, 3)))
    back = store.get(job.id)
    assert back is not None and back.params == params and back.logprobs == LP and back.token_ids == (7, 9)
    old = {k: v for k, v in asdict(Job(prompt="old")).items() if k not in ("logprobs", "token_ids")}
    old["params"] = {"max_tokens": 5, "temperature": 0.0}  # a record written before these fields existed
    old["status"] = "queued"
    assert Job.from_dict(json.loads(json.dumps(old))).params.logit_bias == ()
    store.close()


def test_openai_logprob_forms() -> None:
    legacy = completion_logprobs(LP, 1)
    assert legacy.tokens == ["a", "bc"] and legacy.text_offset == [0, 1] and legacy.token_logprobs == [-0.5, -2.0]
    assert legacy.top_logprobs == [{"a": -0.5}, {"a": -0.1, "bc": -2.0}]  # top-1 plus the token itself
    echoed = completion_logprobs(LP[1:], 0, prompt=LP[:1], first_prompt_token="<s>")
    assert echoed.token_logprobs[0] is None and echoed.top_logprobs[0] is None and echoed.text_offset == [0, 3, 4]
    as_ids = completion_logprobs(LP, 0, as_ids=True)
    assert as_ids.tokens == ["token_id:7", "token_id:9"]
    chat = chat_logprobs(LP, 2).content
    assert chat is not None and chat[1].token == "bc" and chat[1].bytes == [98, 99] and len(chat[1].top_logprobs) == 2
    prompt = prompt_logprobs_out(LP[:1], True)
    assert prompt is not None and prompt[0] is None and prompt[1]["7"]["rank"] == 1 and "9" in prompt[1]
    jobs = [Job(prompt="p", prompt_tokens=4, tokens=3), Job(prompt="p", prompt_tokens=4, tokens=5)]
    assert usage(jobs, n=2).model_dump() == {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12}


def test_requests_ignore_unknown_fields_and_take_vllm_shapes(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "llmsup.web"):
        body = CompletionRequest.model_validate({"prompt": [[1, 2], [3]], "n": 2, "metadata": {"x": 1},
                                                 "store": True, "service_tier": "auto"})
    assert body.prompts() == [[1, 2], [3]] and body.max_tokens == 16
    assert "present in the request but ignored" in caplog.text and "service_tier" in caplog.text
    assert CompletionRequest.model_validate({"prompt": [5, 6]}).prompts() == [[5, 6]]
    chat = ChatCompletionRequest.model_validate({
        "messages": [{"role": "user", "content": "hi", "reasoning_content": "extra key"}],
        "logprobs": True, "top_logprobs": 2, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object"}}}})
    assert chat.sample_logprobs() == 2 and chat.max_tokens is None
    assert structured_of(chat) == Structured("json", '{"type": "object"}')
    assert set(features_used(chat, token_prompts=False)) == {"logprobs", "structured_outputs"}
    for bad in ({"prompt": "x", "best_of": 3}, {"prompt": "x", "stream_options": {"include_usage": True}},
                {"prompt": "x", "logit_bias": {"abc": 1}}, {"prompt": "x", "max_tokens": "3"}):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate(bad)
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})


def test_a_streamed_choice_sends_each_position_once_and_the_rest_with_the_result() -> None:
    from llmsup.supervisor.core.jobs import JobStatus
    from llmsup.web.follow import Update
    from llmsup.web.openai_stream import ChoiceState, _final_chunk

    def make(index: int, text: str, finish: str | None = None, role: bool = False, entries: tuple = (),
             ids: tuple = (), offset: int = 0) -> dict:
        lp = completion_logprobs(entries, 1, offset=offset).model_dump() if entries else None
        return {"choices": [{"index": index, "text": text, "logprobs": lp, "ids": list(ids), "finish_reason": finish}]}

    three = LP + (TokenLogprob(8, "d", -1.0),)
    state = ChoiceState(0, "job-x", max_tokens=10, prompt_tokens=1, wants_logprobs=True, wants_ids=True)
    first = state.chunk(make, "a", *state.token_extras(Update("token", seq=0, text="a", token_id=7, logprob=LP[0])))
    assert first["choices"][0]["logprobs"]["text_offset"] == [0] and first["choices"][0]["ids"] == [7]
    # a retry (engine lost) streams position 0 again: its entry is not sent twice; position 1 is new
    assert state.token_extras(Update("token", seq=0, text="a", token_id=7, logprob=LP[0])) == ([], [])
    second = state.chunk(make, "bc", *state.token_extras(Update("token", seq=1, text="bc", token_id=9, logprob=LP[1])))
    assert second["choices"][0]["logprobs"]["text_offset"] == [1]  # counts on past "a"
    # a gap (the token of position 2 never streamed): later positions wait for the result, in order
    assert state.token_extras(Update("token", seq=3, text="e", token_id=5, logprob=LP[0])) == ([], [])
    done = Job(prompt="p", status=JobStatus.SUCCEEDED, output="abcd", tokens=3, finish_reason="length", logprobs=three,
               token_ids=(7, 9, 8))
    last = _final_chunk(state, done, "d", make)["choices"][0]
    assert last["logprobs"]["tokens"] == ["d"] and last["logprobs"]["text_offset"] == [3] and last["ids"] == [8]
    assert last["finish_reason"] == "length" and last["text"] == "d"
