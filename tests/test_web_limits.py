"""Limits: 413 for big bodies, 422 with a message for bad ones (never a 500), 429 + Retry-After when the queue
is full (nothing half-created), and the health / metrics endpoints."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from webfixtures import Server, job_status, serve, wait_for

pytestmark = pytest.mark.timeout(120)
MAX_BODY = 65_536


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory, "small", engines=1, queue_max=2, max_body_bytes=MAX_BODY,
                     max_prompt_chars=1000, max_tokens_limit=500, max_deadline_s=120)


def test_oversized_bodies_get_413(small: Server) -> None:
    big = b'{"prompt": "' + b"a" * (MAX_BODY + 10) + b'"}'
    with small.client() as c:
        declared = c.post("/v1/jobs", content=big, headers={"content-type": "application/json"})
        assert declared.status_code == 413 and "larger than" in declared.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the size is counted as it streams in
            for i in range(0, len(big), 8192):
                yield big[i:i + 8192]

        streamed = c.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        oai = c.post("/v1/completions", content=big, headers={"content-type": "application/json"})
        assert oai.status_code == 413 and oai.json()["error"]["type"] == "invalid_request_error"
        assert c.get("/v1/jobs").json()["count"] == 0  # nothing was created


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
def test_bad_job_bodies_get_422_with_a_message(small: Server, body: object, needle: str) -> None:
    with small.client() as c:
        resp = c.post("/v1/jobs", json=body)
        assert resp.status_code == 422, resp.text
        assert needle in resp.json()["error"]


@pytest.mark.parametrize(
    "path, content",
    [
        ("/v1/jobs", b"{not json"),
        ("/v1/jobs", b"\xff\xfe"),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": "many"}'),
        ("/v1/chat/completions", b'{"messages": []}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}'),
    ],
)
def test_malformed_input_is_never_a_500(small: Server, path: str, content: bytes) -> None:
    with small.client() as c:
        resp = c.post(path, content=content, headers={"content-type": "application/json"})
        assert resp.status_code == (422 if path == "/v1/jobs" else 400), resp.text  # the OpenAI routes answer 400
    with small.client() as c:
        assert c.get("/v1/jobs", params={"limit": 0}).status_code == 422
        assert c.get("/v1/jobs", params={"status": "nonsense"}).status_code == 422
        assert c.get("/admin/engines/abc", headers=small.admin).status_code == 422


def test_full_queue_gets_429_with_retry_after_and_creates_nothing(small: Server) -> None:
    with small.client() as c:
        runaway = c.post("/v1/jobs", json={"prompt": "[sim:hang]", "deadline_s": 60}).json()
        wait_for(lambda: job_status(c, runaway["id"])["status"] == "running", what="runaway running")
        queued = [c.post("/v1/jobs", json={"prompt": f"q{i}", "max_tokens": 1}).json()["id"] for i in range(2)]
        try:
            before = c.get("/v1/jobs", params={"limit": 1000}).json()["count"]
            full = c.post("/v1/jobs", json={"prompt": "one too many", "idempotency_key": "late"})
            assert full.status_code == 429
            assert int(full.headers["retry-after"]) >= 1 and "queue full" in full.json()["error"]
            with openai.OpenAI(base_url=small.url + "/v1", api_key="x", max_retries=0) as oai:
                with pytest.raises(openai.RateLimitError) as err:
                    oai.completions.create(model="sim", prompt="x", max_tokens=1)
                assert err.value.code == "queue_full" and err.value.response.headers["retry-after"]
            assert c.get("/v1/jobs", params={"limit": 1000}).json()["count"] == before  # nothing half-created
            again = c.post("/v1/jobs", json={"prompt": "one too many", "idempotency_key": "late"})
            assert again.status_code == 429  # the key was not taken by the refused submission
        finally:
            c.post(f"/admin/jobs/{runaway['id']}/kill", headers=small.admin)
        for jid in queued:  # the engine is free again: the queue drains
            wait_for(lambda jid=jid: job_status(c, jid)["status"] == "succeeded", what="queued jobs to run")


def test_health_ready_and_metrics(small: Server) -> None:
    with small.client() as c:
        assert c.get("/healthz").json()["status"] == "ok"
        ready = c.get("/readyz").json()
        assert ready["status"] == "ready" and ready["engines"] == 1
        c.post("/v1/completions", json={"prompt": "count me", "max_tokens": 3})
        text = c.get("/metrics").text
    for family in (
        "llmsup_queue_depth", "llmsup_running_jobs", "llmsup_job_outcomes_total", "llmsup_queue_wait_seconds_bucket",
        "llmsup_run_seconds_bucket", "llmsup_interrupt_steps_total", "llmsup_engine_restarts",
        "llmsup_tokens_generated_total", "llmsup_time_to_first_token_seconds_bucket", "llmsup_engines",
        "llmsup_http_requests_total", "llmsup_http_request_seconds_bucket", "llmsup_sse_streams",
    ):
        assert family in text, family
    assert 'llmsup_http_requests_total{method="POST",route="/v1/completions",status="200"}' in text
    assert 'llmsup_job_outcomes_total{status="succeeded"}' in text
