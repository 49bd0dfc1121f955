"""Limits: 413 for big bodies, 422 with a message for bad ones (never a 500), 429 + Retry-After when the queue
is full (nothing half-created), and the health / metrics endpoints.

In-process (``support.inprocess``): none of this needs an engine. Jobs submitted here stay queued.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from support.inprocess import InProcessApp, in_process

pytestmark = pytest.mark.timeout(60)
MAX_BODY = 65_536
LIMITS = dict(queue_max=2, max_body_bytes=MAX_BODY, max_prompt_chars=1000, max_tokens_limit=500, max_deadline_s=120)


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[InProcessApp]:
    async with in_process(tmp_path / "run", **LIMITS) as app:
        yield app


async def test_oversized_bodies_get_413(small: InProcessApp) -> None:
    big = b'{"prompt": "' + b"a" * (MAX_BODY + 10) + b'"}'
    c = small.http
    declared = await c.post("/v1/jobs", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "larger than" in declared.json()["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the size is counted as it streams in
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    streamed = await c.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    oai = await c.post("/v1/completions", content=big, headers={"content-type": "application/json"})
    assert oai.status_code == 413 and oai.json()["error"]["type"] == "invalid_request_error"
    assert (await c.get("/v1/jobs")).json()["count"] == 0  # nothing was created


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"prompt": "x" * 1001}, "prompt longer than 1000"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "max_tokens": 501}, "max_tokens must be in [1, 500]"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "deadline_s": 0}, "deadline_s"),
        ({"prompt": "x", "deadline_s": 121}, "deadline_s must be in (0, 120"),
        ({"prompt": "x", "priority": 5000}, "priority"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "colour": "red"}, "unknown field 'colour'"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "stop": "not-a-list"}, "stop"),
        ([1, 2], "valid dictionary"),
    ],
)
async def test_bad_job_bodies_get_422_with_a_message(small: InProcessApp, body: object, needle: str) -> None:
    resp = await small.http.post("/v1/jobs", json=body)
    assert resp.status_code == 422, resp.text
    assert needle in resp.json()["error"]


@pytest.mark.parametrize(
    "path, content",
    [
        ("/v1/jobs", b"{not json"),
        ("/v1/jobs", b"\xff\xfe"),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": "many"}'),
        ("/v1/chat/completions", b'{"messages": []}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}'),
    ],
)
async def test_malformed_input_is_never_a_500(small: InProcessApp, path: str, content: bytes) -> None:
    c = small.http
    resp = await c.post(path, content=content, headers={"content-type": "application/json"})
    assert resp.status_code == (422 if path == "/v1/jobs" else 400), resp.text  # the OpenAI routes answer 400
    assert (await c.get("/v1/jobs", params={"limit": 0})).status_code == 422
    assert (await c.get("/v1/jobs", params={"status": "nonsense"})).status_code == 422
    assert (await c.get("/admin/engines/abc", headers=small.admin)).status_code == 422


async def test_full_queue_gets_429_with_retry_after_and_creates_nothing(small: InProcessApp) -> None:
    c = small.http
    queued = [(await c.post("/v1/jobs", json={"prompt": f"q{i}", "max_tokens": 1})).json()["id"] for i in range(2)]
    before = (await c.get("/v1/jobs", params={"limit": 1000})).json()["count"]
    full = await c.post("/v1/jobs", json={"prompt": "one too many", "idempotency_key": "late"})
    assert full.status_code == 429
    assert int(full.headers["retry-after"]) >= 1 and "queue full" in full.json()["error"]
    async with small.openai() as oai:
        with pytest.raises(openai.RateLimitError) as err:
            await oai.completions.create(model="sim", prompt="x", max_tokens=1)
    assert err.value.code == "queue_full" and err.value.response.headers["retry-after"]
    assert (await c.get("/v1/jobs", params={"limit": 1000})).json()["count"] == before  # nothing half-created
    again = await c.post("/v1/jobs", json={"prompt": "one too many", "idempotency_key": "late"})
    assert again.status_code == 429  # the key was not taken by the refused submission
    for jid in queued:  # room again: the key is free to use
        assert (await c.post(f"/v1/jobs/{jid}/cancel")).json()["status"] == "cancelled"
    assert (await c.post("/v1/jobs", json={"prompt": "now there is room", "idempotency_key": "late"})).status_code == 202


async def test_health_ready_and_metrics(small: InProcessApp) -> None:
    c = small.http
    assert (await c.get("/healthz")).json()["status"] == "ok"
    not_ready = await c.get("/readyz")  # no engine serves
    assert not_ready.status_code == 503 and not_ready.json() == {"status": "not ready", "engines": 0}
    assert (await c.post("/v1/jobs", json={"prompt": "count me", "max_tokens": 3})).status_code == 202
    metrics = await c.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for family in (
        "llmsup_queue_depth", "llmsup_running_jobs", "llmsup_job_outcomes_total", "llmsup_queue_wait_seconds_bucket",
        "llmsup_run_seconds_bucket", "llmsup_interrupt_steps_total", "llmsup_engine_restarts",
        "llmsup_tokens_generated_total", "llmsup_time_to_first_token_seconds_bucket", "llmsup_engines",
        "llmsup_http_requests_total", "llmsup_http_request_seconds_bucket", "llmsup_sse_streams",
    ):
        assert family in text, family
    assert 'llmsup_http_requests_total{method="POST",route="/v1/jobs",status="202"} 1.0' in text
    assert 'llmsup_http_requests_total{method="GET",route="/readyz",status="503"} 1.0' in text
    assert "llmsup_jobs_submitted_total 1.0" in text
