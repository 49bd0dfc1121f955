"""What a browser page of another site could send is refused before any route runs: a body that is not declared
JSON (415), a non-GET request from a foreign Origin (403); the server's own origin and allowed_origins pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_web_guards import ALICE, open_app

pytestmark = pytest.mark.timeout(60)
BODY = b'{"prompt": "x", "max_tokens": 1}'


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/completions"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
async def test_a_body_not_declared_json_gets_415(tmp_path: Path, path: str, content_type: str | None) -> None:
    async for a in open_app(tmp_path / "run", owner_queue_max=0):
        headers = {**ALICE, **({"content-type": content_type} if content_type else {})}
        resp = await a.http.post(path, content=BODY, headers=headers)
        assert resp.status_code == 415, resp.text
        assert "must be JSON (Content-Type: application/json)" in resp.text
        for declared in ("application/json", "application/json; charset=utf-8", "application/vnd.api+json"):
            ok = await a.http.post("/v1/jobs", content=BODY, headers={**ALICE, "content-type": declared})
            assert ok.status_code == 202, (declared, ok.text)


async def test_a_foreign_origin_is_refused_on_non_get_requests(tmp_path: Path) -> None:
    async for a in open_app(tmp_path / "run", owner_queue_max=0):
        foreign = {**ALICE, "origin": "https://evil.example"}
        refused = await a.http.post("/v1/jobs", json={"prompt": "x"}, headers=foreign)
        assert refused.status_code == 403 and "evil.example" in refused.text and "allowed_origins" in refused.text
        assert (await a.http.delete("/v1/jobs/job-x", headers=foreign)).status_code == 403
        assert (await a.http.post("/admin/engines/1/drain", headers={**a.admin, "origin": "null"})).status_code == 403
        assert (await a.http.get("/v1/jobs", headers=foreign)).status_code == 200  # reads: CORS decides what a page sees
        own = await a.http.post("/v1/jobs", json={"prompt": "x"}, headers={**ALICE, "origin": "http://127.0.0.1:8000"})
        assert own.status_code == 202  # the server's own page (the dashboard)
        other_port = await a.http.post("/v1/jobs", json={"prompt": "x"}, headers={**ALICE, "origin": "http://127.0.0.1:9"})
        assert other_port.status_code == 403  # another origin on the same host
        proxied = await a.http.post("/v1/jobs", json={"prompt": "x"}, headers={
            **ALICE, "origin": "https://llm.example", "x-forwarded-host": "llm.example"})
        assert proxied.status_code == 202  # the server's own page, behind a proxy that forwards the name
        assert (await a.http.post("/v1/jobs", json={"prompt": "x"}, headers=ALICE)).status_code == 202  # no Origin


async def test_allowed_origins_pass(tmp_path: Path) -> None:
    async for a in open_app(tmp_path / "run", allowed_origins="https://app.example"):
        ok = await a.http.post("/v1/jobs", json={"prompt": "x"}, headers={**ALICE, "origin": "https://app.example"})
        assert ok.status_code == 202 and ok.headers["access-control-allow-origin"] == "https://app.example"
        no = await a.http.post("/v1/jobs", json={"prompt": "x"}, headers={**ALICE, "origin": "https://evil.example"})
        assert no.status_code == 403
    async for a in open_app(tmp_path / "any", allowed_origins="*", owner_queue_max=0):
        ok = await a.http.post("/v1/jobs", json={"prompt": "x"}, headers={**ALICE, "origin": "https://evil.example"})
        assert ok.status_code == 202
