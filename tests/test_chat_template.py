"""The chat route renders messages with the model's own template, exactly as its tokenizer would."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from llmsup.engines.chat_template import chat_info
from llmsup.supervisor.core.requests import InvalidRequest
from llmsup.web.chat import ModelTemplate, SimpleTemplate
from llmsup.web.openai_schemas import ChatMessage

pytestmark = [pytest.mark.real, pytest.mark.timeout(60)]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


def test_model_template_matches_the_tokenizer(tiny_model: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    info = chat_info(tok)
    assert info["chat_template"]
    ours = ModelTemplate(info["chat_template"], info["bos_token"], info["eos_token"])
    rendered = ours.render([ChatMessage(**m) for m in MESSAGES])
    assert rendered == tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)


def test_template_errors_are_client_errors() -> None:
    strict = ModelTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}ok")
    with pytest.raises(InvalidRequest, match="user first"):
        strict.render([ChatMessage(role="system", content="x")])


def test_simple_template_without_a_model_template() -> None:
    text = SimpleTemplate().render([ChatMessage(**m) for m in MESSAGES])
    assert text.endswith("User: Hello there\nAssistant:")
