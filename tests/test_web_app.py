"""The app itself, in-process: health, the OpenAPI schema it serves, and the error shape of unknown routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.inprocess import InProcessApp, in_process

pytestmark = pytest.mark.timeout(60)


async def test_healthz_answers_without_engines(web: InProcessApp) -> None:
    resp = await web.http.get("/healthz")
    assert resp.status_code == 200 and resp.json()["status"] == "ok"


async def test_the_served_schema_is_the_apps_and_states_its_limits(tmp_path: Path) -> None:
    async with in_process(tmp_path / "run", max_tokens_limit=77, max_deadline_s=9, deadline_s=5,
                          max_prompt_chars=123) as web:
        served = (await web.http.get("/openapi.json")).json()
        assert served == web.app.openapi()
        assert served["info"]["title"] == "llmsup"
        job = served["components"]["schemas"]["JobCreate"]["properties"]
        assert job["prompt"]["maxLength"] == 123
        assert {b.get("maximum") for b in job["max_tokens"].get("anyOf", [job["max_tokens"]])} - {None} == {77}
        assert {b.get("maximum") for b in job["deadline_s"].get("anyOf", [job["deadline_s"]])} - {None} == {9}
        docs = await web.http.get("/docs")
        assert docs.status_code == 200 and "openapi.json" in docs.text


async def test_every_operation_documents_its_errors(web: InProcessApp) -> None:
    paths = web.app.openapi()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/completions", "/v1/chat/completions", "/v1/models",
            "/admin/engines", "/healthz", "/readyz", "/metrics"} <= set(paths)
    for path, ops in paths.items():
        for method, op in ops.items():
            codes = set(op["responses"])
            if op.get("parameters") or op.get("requestBody"):
                assert "422" in codes, (method, path)
            if path.startswith("/admin"):
                assert {"401", "403"} <= codes, (method, path)


async def test_unknown_routes_and_methods_are_clear_4xx(web: InProcessApp) -> None:
    missing = await web.http.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]
    wrong = await web.http.delete("/v1/jobs")
    assert wrong.status_code == 405 and set(wrong.headers["allow"].split(", ")) >= {"GET", "POST"}
