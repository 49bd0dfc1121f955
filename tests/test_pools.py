"""Engine pools on a real server (``llmsup serve`` with two sim pools of different served names): both served at
once, OpenAI requests picked by ``model``, native jobs and pipeline steps by ``pool``, each job run only on an
engine of its pool; unknown models and pools are 404s that name what is served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from support.live import LiveServer, finish_server, sim_environment, start_llmsup
from support.waiting import eventually

pytestmark = [pytest.mark.real, pytest.mark.timeout(180)]  # llmsup serve as a process
POOLS = ("--pool", "name=small,backend=sim,engines=1,served_model_name=m-small",
         "--pool", "name=big,backend=sim,engines=2,served_model_name=m-big")


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    base: Path = tmp_path_factory.mktemp("pools")
    server = start_llmsup(base / "run", base, sim_environment(base), engines=3, args=POOLS, cwd=base)
    try:
        yield server
    finally:
        finish_server(server)


def pools_of_engines(http: httpx.Client, server: LiveServer) -> dict[int, str]:
    engines = http.get("/admin/engines", headers=server.admin).json()["engines"]
    return {e["id"]: e["pool"] for e in engines}


def finished(http: httpx.Client, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] not in ("queued", "running") else None

    return eventually(done, 30, f"job {job_id} ended")


def test_every_pool_is_served_with_its_own_engines(pooled: LiveServer) -> None:
    with pooled.client() as http:
        models = [m["id"] for m in http.get("/v1/models").json()["data"]]
        assert models == ["m-small", "m-big"]
        engine_pools = pools_of_engines(http, pooled)
        assert sorted(engine_pools.values()) == ["big", "big", "small"]


def test_openai_requests_run_in_the_pool_of_their_model(pooled: LiveServer) -> None:
    sdk = openai.OpenAI(base_url=pooled.url + "/v1", api_key=pooled.api_key, max_retries=0)
    with pooled.client() as http:
        engine_pools = pools_of_engines(http, pooled)
        for model, pool in (("m-small", "small"), ("m-big", "big"), ("m-big", "big"), ("m-small", "small")):
            answer = sdk.completions.create(model=model, prompt=f"to {pool} one two", max_tokens=3)
            assert answer.model == model and answer.choices[0].text
            jobs = http.get("/v1/jobs", params={"limit": 5}).json()["jobs"]
            job = next(j for j in jobs if j["prompt"] == f"to {pool} one two")
            assert job["pool"] == pool and engine_pools[job["engine"]["id"]] == pool
        with pytest.raises(openai.NotFoundError, match="m-small"):
            sdk.completions.create(model="no-such-model", prompt="x", max_tokens=1)


def test_native_jobs_take_a_pool_by_name_or_model(pooled: LiveServer) -> None:
    with pooled.client() as http:
        engine_pools = pools_of_engines(http, pooled)
        for given, pool in (("big", "big"), ("small", "small"), ("m-big", "big"), (None, "small")):
            body = {"prompt": "a b c", "max_tokens": 2, **({"pool": given} if given else {})}
            resp = http.post("/v1/jobs", json=body)
            assert resp.status_code == 202, resp.text
            job = finished(http, resp.json()["id"])
            assert job["status"] == "succeeded" and job["pool"] == pool
            assert engine_pools[job["engine"]["id"]] == pool
        resp = http.post("/v1/jobs", json={"prompt": "a", "pool": "huge"})
        assert resp.status_code == 404 and "small" in resp.text and "big" in resp.text


def test_pipeline_steps_run_in_their_pools(pooled: LiveServer) -> None:
    with pooled.client() as http:
        engine_pools = pools_of_engines(http, pooled)
        resp = http.post("/v1/pipelines", json={"steps": [
            {"name": "a", "prompt": "alpha beta", "pool": "small", "max_tokens": 2},
            {"name": "b", "prompt": "Summarize: {{a}}", "pool": "m-big", "after": ["a"], "max_tokens": 4},
        ], "deadline_s": 60})
        assert resp.status_code == 202, resp.text

        def ended() -> dict[str, Any] | None:
            body: dict[str, Any] = http.get(f"/v1/pipelines/{resp.json()['id']}").json()
            return body if body["status"] not in ("queued", "running") else None

        done = eventually(ended, 60, "pipeline ended")
        assert done["status"] == "succeeded", done
        for step, pool in zip(done["steps"], ("small", "big")):
            job = http.get(f"/v1/jobs/{step['job_ids'][0]}").json()
            assert job["pool"] == pool and engine_pools[job["engine"]["id"]] == pool
        bad = http.post("/v1/pipelines", json={"steps": [{"name": "a", "prompt": "x", "pool": "huge"}]})
        assert bad.status_code in (400, 422) and "small" in bad.text
