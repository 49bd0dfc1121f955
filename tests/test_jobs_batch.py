"""``POST /v1/jobs:batch`` on the in-process app: all or none, one quota check, ids in order, each job's own deadline."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmsup.supervisor.core.jobs import JobStatus
from support.inprocess import in_process

pytestmark = pytest.mark.timeout(60)


async def test_batch_queues_every_job_in_order_with_its_own_deadline(tmp_path: Path) -> None:
    async with in_process(tmp_path) as app:
        jobs = [{"prompt": f"p{i}", "max_tokens": 1, "deadline_s": 1 + i} for i in range(300)]
        resp = await app.http.post("/v1/jobs:batch", json={"jobs": jobs})
        assert resp.status_code == 202, resp.text
        body = resp.json()
        assert body["created"] == 300 and len(set(body["ids"])) == 300
        for i in (0, 150, 299):
            job = (await app.http.get(f"/v1/jobs/{body['ids'][i]}")).json()
            assert job["prompt"] == f"p{i}" and job["deadline_s"] == 1 + i and job["status"] == "queued"
        assert app.supervisor.count(JobStatus.QUEUED) == 300


async def test_a_bad_job_refuses_the_whole_batch_and_names_it(tmp_path: Path) -> None:
    async with in_process(tmp_path, max_prompt_chars=100) as app:
        jobs = [{"prompt": "ok"}, {"prompt": "x" * 101}]
        resp = await app.http.post("/v1/jobs:batch", json={"jobs": jobs})
        assert resp.status_code == 422 and "jobs[1]: prompt longer than 100" in resp.json()["error"], resp.text
        assert app.supervisor.count(JobStatus.QUEUED) == 0
        resp = await app.http.post("/v1/jobs:batch", json={"jobs": []})
        assert resp.status_code == 422
        resp = await app.http.post("/v1/jobs:batch", json={"jobs": [{"prompt": "a", "max_tokens": 0}]})
        assert resp.status_code == 422


async def test_one_quota_check_for_the_batch(tmp_path: Path) -> None:
    async with in_process(tmp_path, queue_max=10) as app:
        resp = await app.http.post("/v1/jobs:batch", json={"jobs": [{"prompt": "a"}] * 11})
        assert resp.status_code == 429, resp.text
        assert app.supervisor.count(JobStatus.QUEUED) == 0  # none queued: all or none
        resp = await app.http.post("/v1/jobs:batch", json={"jobs": [{"prompt": "a"}] * 10})
        assert resp.status_code == 202
        assert (await app.http.post("/v1/jobs:batch", json={"jobs": [{"prompt": "a"}]})).status_code == 429


async def test_idempotency_keys_in_a_batch(tmp_path: Path) -> None:
    async with in_process(tmp_path) as app:
        first = (await app.http.post("/v1/jobs:batch", json={"jobs": [{"prompt": "a", "idempotency_key": "k"}]})).json()
        again = await app.http.post("/v1/jobs:batch", json={"jobs": [{"prompt": "a", "idempotency_key": "k"},
                                                                      {"prompt": "b"}]})
        assert again.status_code == 202
        assert again.json()["ids"][0] == first["ids"][0] and again.json()["created"] == 1
