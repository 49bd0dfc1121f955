"""The OpenAI surface on the transformers backend (tiny random Llama, one unbatched engine): what it honours
(penalties, min_p, seed, logprobs, token prompts) and the 400 that says why for structured outputs."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from support.live import serving

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(300)]
MODEL = "tiny-hf"


@pytest.fixture(scope="module")
def oai(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Iterator[openai.OpenAI]:  # noqa: F811
    with (serving(tmp_path_factory.mktemp("oai-hf"), engines=1, backend="transformers", start_timeout_s=240,
                  model=tiny_model, served_model_name=MODEL, standby=0, engine_start_timeout_s=200) as server,
          openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120) as client):
        yield client


def test_logprobs_penalties_and_seed(oai: openai.OpenAI) -> None:
    resp = oai.completions.create(model=MODEL, prompt="The job", max_tokens=6, logprobs=3, n=2, temperature=1.0,
                                  seed=11, presence_penalty=0.5, frequency_penalty=0.5, top_p=0.9,
                                  extra_body={"repetition_penalty": 1.2, "min_p": 0.01, "ignore_eos": True,
                                              "return_token_ids": True})
    assert len(resp.choices) == 2 and resp.choices[0].text != resp.choices[1].text
    for choice in resp.choices:
        assert len(choice.logprobs.tokens) == 6 and all(3 <= len(t) <= 4 for t in choice.logprobs.top_logprobs)
        assert len(choice.model_extra["token_ids"]) == 6
    again = oai.completions.create(model=MODEL, prompt="The job", max_tokens=6, temperature=1.0, seed=11,
                                   presence_penalty=0.5, frequency_penalty=0.5, top_p=0.9,
                                   extra_body={"repetition_penalty": 1.2, "min_p": 0.01, "ignore_eos": True})
    assert again.choices[0].text == resp.choices[0].text  # seeded: reproducible
    allowed = oai.completions.create(model=MODEL, prompt="x", max_tokens=5, temperature=1.0,
                                     extra_body={"allowed_token_ids": [100, 101], "return_token_ids": True})
    assert set(allowed.choices[0].model_extra["token_ids"]) <= {100, 101}


def test_without_temperature_the_choices_are_sampled_and_greedy_only_when_asked(oai: openai.OpenAI) -> None:
    """vLLM's defaults: no temperature is the model's generation_config (the tiny model has none: 1.0), not greedy."""
    request = dict(model=MODEL, max_tokens=12, messages=[{"role": "user", "content": "Tell me a story"}],
                   extra_body={"ignore_eos": True})
    sampled = oai.chat.completions.create(n=3, **request)
    assert len({c.message.content for c in sampled.choices}) > 1
    greedy = oai.chat.completions.create(n=3, temperature=0.0, **request)
    assert len({c.message.content for c in greedy.choices}) == 1


def test_streamed_chat_sends_each_token_with_its_logprobs_and_id(oai: openai.OpenAI) -> None:
    request = dict(model=MODEL, max_tokens=8, logprobs=True, top_logprobs=2, messages=[{"role": "user", "content": "hi"}],
                   temperature=0.0, extra_body={"ignore_eos": True, "return_token_ids": True})
    chunks = list(oai.chat.completions.create(stream=True, **request))
    tokens = [c.choices[0] for c in chunks if c.choices[0].logprobs]
    assert len(tokens) == 8 and all(len(c.logprobs.content) == len(c.model_extra["token_ids"]) == 1 for c in tokens)
    whole = oai.chat.completions.create(**request).choices[0]  # greedy: the same tokens
    assert [c.model_extra["token_ids"][0] for c in tokens] == whole.model_extra["token_ids"]
    assert [c.logprobs.content[0].token for c in tokens] == [t.token for t in whole.logprobs.content]


def test_chat_logprobs_and_token_prompts(oai: openai.OpenAI) -> None:
    chat = oai.chat.completions.create(model=MODEL, max_tokens=4, logprobs=True, top_logprobs=2,
                                       messages=[{"role": "user", "content": "hi"}], extra_body={"ignore_eos": True})
    assert len(chat.choices[0].logprobs.content) == 4
    ids = oai.completions.create(model=MODEL, prompt=[5, 6, 7, 8], max_tokens=3, extra_body={"ignore_eos": True,
                                 "prompt_logprobs": 1})
    assert ids.choices[0].finish_reason == "length" and ids.usage.prompt_tokens == 4
    assert len(ids.choices[0].model_extra["prompt_logprobs"]) == 4  # None, then one per later prompt token


def test_structured_outputs_are_a_400_that_says_why(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=MODEL, max_tokens=4, response_format={"type": "json_object"},
                                    messages=[{"role": "user", "content": "JSON"}])
    assert "transformers backend has no structured-output" in err.value.message
