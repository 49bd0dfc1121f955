"""Sampling defaults as vLLM's: a request's unset sampling fields come from the model's generation_config.json,
else temperature 1.0 (sampled: greedy only when asked)."""

from __future__ import annotations

import json
import pathlib

from llmsup.engines.generation_defaults import from_model_dir, pick
from llmsup.web.openai_params import sampling
from llmsup.web.openai_schemas import CompletionRequest
from llmsup.web.tokens import ServedModel


def test_the_model_dir_generation_config_gives_its_sampling_values(tmp_path: pathlib.Path) -> None:
    assert from_model_dir(str(tmp_path)) == {}  # no generation_config.json: none
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "do_sample": True, "eos_token_id": 2, "max_new_tokens": 9}))
    assert from_model_dir(str(tmp_path)) == {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
    assert pick({"temperature": None, "top_k": True, "min_p": 0}) == {"min_p": 0.0}


def request(**fields: object) -> CompletionRequest:
    return CompletionRequest.model_validate({"prompt": "x", **fields})


def test_unset_fields_take_the_model_defaults_else_vllm_neutral_ones() -> None:
    plain = ServedModel("transformers", "m")
    assert sampling(request(), plain)["temperature"] == 1.0 and sampling(request(), None)["temperature"] == 1.0
    assert sampling(request(), plain)["top_p"] is None  # the engine's neutral 1.0
    assert sampling(request(temperature=0), plain)["temperature"] == 0  # greedy only when asked
    model = ServedModel("vllm", "m", sampling_defaults={"temperature": 0.6, "top_p": 0.95, "repetition_penalty": 1.1})
    values = sampling(request(), model)
    assert (values["temperature"], values["top_p"], values["repetition_penalty"]) == (0.6, 0.95, 1.1)
    asked = sampling(request(temperature=0.2, top_p=0.5), model)
    assert (asked["temperature"], asked["top_p"], asked["repetition_penalty"]) == (0.2, 0.5, 1.1)
    cannot = ServedModel("transformers", "m", unsupported={"penalties": "no"}, sampling_defaults={"repetition_penalty": 1.1})
    assert sampling(request(), cannot)["repetition_penalty"] is None  # never a 400 for what the request did not ask
