"""Two pools of different real models in one ``llmsup serve``: the tiny model and a second tiny model (another
config: 2 layers, a context of 512 tokens; other random weights), each on a transformers engine of its own pool.

``/v1/models`` lists both with each model's own facts (its path, its context length); a request picks its pool by
``model`` and runs on that pool's engine, which loaded that pool's model; each model's context length bounds its own
requests only; the two models answer the same greedy request differently (they are different weights)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from fixtures_models import models_run_dir_fixture, tiny_model_b_fixture, tiny_model_fixture  # noqa: F401
from support.live import LiveServer, finish_server, sim_environment, start_llmsup

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory, tiny_model: str,  # noqa: F811
               tiny_model_b: str) -> Iterator[LiveServer]:  # noqa: F811
    base: Path = tmp_path_factory.mktemp("pools-models")
    pools = ["--pool", f"name=a,backend=transformers,model={tiny_model},engines=1,served_model_name=tiny-a",
             "--pool", f"name=b,backend=transformers,model={tiny_model_b},engines=1,served_model_name=tiny-b"]
    env = sim_environment(base, {"LLMSUP_ENGINE_START_TIMEOUT_S": "200", "LLMSUP_DEADLINE_S": "60",
                                 "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    server = start_llmsup(base / "run", base, env, engines=2, args=["--standby", "0", *pools], cwd=base,
                          timeout=240)
    try:
        yield server
    finally:
        finish_server(server)


def engines_by_id(http: httpx.Client, server: LiveServer) -> dict[int, dict[str, Any]]:
    return {e["id"]: e for e in http.get("/admin/engines", headers=server.admin).json()["engines"]}


def test_both_models_are_listed_with_their_own_facts_and_each_request_runs_on_its_models_engine(
        two_models: LiveServer, tiny_model: str, tiny_model_b: str) -> None:  # noqa: F811
    paths = {"tiny-a": tiny_model, "tiny-b": tiny_model_b}
    with two_models.client() as http:
        cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
        assert set(cards) == {"tiny-a", "tiny-b"}
        assert (cards["tiny-a"]["root"], cards["tiny-a"]["max_model_len"]) == (tiny_model, 2048)
        assert (cards["tiny-b"]["root"], cards["tiny-b"]["max_model_len"]) == (tiny_model_b, 512)
        engines = engines_by_id(http, two_models)
        assert sorted((e["pool"], e["backend"], e["model"]) for e in engines.values()) == [
            ("a", "transformers", tiny_model), ("b", "transformers", tiny_model_b)]

        sdk = openai.OpenAI(base_url=two_models.url + "/v1", api_key=two_models.api_key, max_retries=0, timeout=60)
        for model in ("tiny-a", "tiny-b", "tiny-a"):
            prompt = f"The job for {model} runs"
            answer = sdk.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0.0,
                                            extra_body={"ignore_eos": True})
            assert answer.model == model and answer.usage.completion_tokens == 8
            job = next(j for j in http.get("/v1/jobs", params={"limit": 10}).json()["jobs"] if j["prompt"] == prompt)
            engine = engines[job["engine"]["id"]]
            assert job["status"] == "succeeded" and job["pool"] == engine["pool"] == model[-1]
            assert engine["model"] == paths[model]  # the engine that answered loaded this pool's model

        same = [sdk.completions.create(model=m, prompt="The job", max_tokens=8, temperature=0.0,
                                       extra_body={"ignore_eos": True}).choices[0].text for m in ("tiny-a", "tiny-b")]
        assert same[0] != same[1]  # different weights: a request did not reach the other model

        long_prompt = "job " * 700  # over tiny-b's 512 tokens, within tiny-a's 2048
        with pytest.raises(openai.BadRequestError, match="maximum context length is 512"):
            sdk.completions.create(model="tiny-b", prompt=long_prompt, max_tokens=1)
        fits = sdk.completions.create(model="tiny-a", prompt=long_prompt, max_tokens=1)
        assert fits.usage.prompt_tokens > 512 and fits.choices[0].text is not None
