"""Small leaks closed: the unknown-field warning cache is bounded, deleted jobs leave no text in the SQLite files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmsup.supervisor.client.base import Endpoint
from llmsup.supervisor.client.discovery import DEFAULT_URL, find_url
from llmsup.supervisor.core.jobs import Job
from llmsup.supervisor.settings import Settings
from llmsup.supervisor.store import SQLiteStore, retention
from llmsup.web import openai_schemas
from llmsup.web.openai_schemas import StreamOptions
from test_retention import finished
from test_web_guards import open_app

pytestmark = pytest.mark.timeout(60)


def test_the_unknown_field_warning_cache_is_bounded(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(openai_schemas, "_WARNED", set())
    for body in range(50):
        StreamOptions.model_validate({f"{body}-{i}-" + "x" * 5000: 1 for i in range(20)})
    stored = sum(len(name) for names in openai_schemas._WARNED for name in names)
    assert stored <= 50 * openai_schemas.NAMES_MAX * openai_schemas.NAME_CHARS  # not 50 x 20 x 5,000 characters
    assert max(len(r.getMessage()) for r in caplog.records) < 2000 and "and 4 more" in caplog.text
    for body in range(2 * openai_schemas.WARNED_MAX):
        StreamOptions.model_validate({f"field-{body}": 1})
    assert len(openai_schemas._WARNED) == openai_schemas.WARNED_MAX


def test_a_pruned_job_leaves_no_text_in_the_database_files(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.sqlite")
    try:
        marker = "SECRET-PROMPT-" + "z" * 100
        job = finished(store, at=1000.0)
        store.put(job.with_changes(prompt=marker, output=marker))
        kept = store.add(Job(prompt="still queued"))
        assert retention.prune_once(store, Settings(run_dir=tmp_path, retain_s=10), now=2000.0) == 1
        assert store.get(job.id) is None and store.get(kept.id) is not None
        for path in tmp_path.glob("jobs.sqlite*"):
            assert marker.encode() not in path.read_bytes(), path.name
    finally:
        store.close()


async def test_docs_load_nothing_from_elsewhere(tmp_path: Path) -> None:
    async for a in open_app(tmp_path / "run", root_path="/llm"):
        page = await a.http.get("/docs")
        assert page.status_code == 200 and "/llm/openapi.json" in page.text and "/v1/chat/completions" in page.text
        assert "<script" not in page.text and "cdn" not in page.text.lower() and "https://" not in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert (await a.http.get("/redoc")).status_code == 404  # ReDoc's page loads its script from a CDN
        assert (await a.http.get("/openapi.json")).status_code == 200


def test_a_server_file_that_is_not_the_users_own_private_file_is_ignored(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMSUP_URL", raising=False)
    planted = tmp_path / "server.json"
    planted.write_text(json.dumps({"url": "http://attacker.example:8000"}))
    os.chmod(planted, 0o644)
    assert find_url(None, tmp_path) == DEFAULT_URL
    assert "ignored: not a private file" in Endpoint.resolve(None, tmp_path, None).source
    os.chmod(planted, 0o600)
    assert find_url(None, tmp_path) == "http://attacker.example:8000"  # now it is a private file of this user
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "server.json").symlink_to(planted)
    assert find_url(None, tmp_path / "elsewhere") == DEFAULT_URL  # a link: not followed
    if os.geteuid() == 0:  # as root the test can give the file to another user
        os.chown(planted, 4242, -1)
        assert find_url(None, tmp_path) == DEFAULT_URL


@pytest.mark.parametrize("host", ["-oProxyCommand=touch /tmp/x", "user@-oX", "gpu1 -p 22", "h;id", "@h", "h:"])
def test_hosts_take_ssh_destinations_only(host: str) -> None:
    with pytest.raises(ValidationError, match="is not \\[user@\\]host\\[:port\\]"):
        Settings(hosts=host)
    assert Settings(hosts="gpu1, root@gpu2:2222,10.0.0.3,[fd00::1]:22").hosts[1] == "root@gpu2:2222"
