"""Admin token and API keys: 401/403 on every admin route, owner isolation, the generated token file."""

from __future__ import annotations

import hmac
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from llmsup.supervisor.settings import Settings
from llmsup.web import auth
from llmsup.web.app import create_app
from support.inprocess_server import Server, serving_in_process
from support.live import job_status
from support.waiting import eventually

pytestmark = pytest.mark.timeout(120)
ALICE, BOB = {"Authorization": "Bearer key-alice-0123456789"}, {"Authorization": "Bearer key-bob-0123456789ab"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving_in_process(tmp_path_factory.mktemp("keyed"), require_api_keys="on", sse_max_per_owner=1,
                            api_keys="alice:key-alice-0123456789,bob:key-bob-0123456789ab", auth_backoff_s=0) as live:
        yield live


def admin_routes() -> list[tuple[str, str]]:
    """Every admin route of the app's own OpenAPI spec, with example path parameters."""
    spec = create_app(Settings(run_dir=Path("/nonexistent"))).openapi()
    routes = []
    for path, ops in spec["paths"].items():
        if path.startswith("/admin"):
            concrete = path.replace("{job_id}", "job-none").replace("{engine_id}", "999")
            routes.extend((method.upper(), concrete) for method in ops)
    return routes


def test_the_admin_route_list_is_complete() -> None:
    found = {p for _, p in admin_routes()}
    assert {"/admin/engines", "/admin/jobs/job-none/kill", "/admin/engines/999/restart"} <= found
    assert len(admin_routes()) >= 6


@pytest.mark.parametrize("method, path", admin_routes())
def test_every_admin_route_needs_the_admin_token(keyed: Server, method: str, path: str) -> None:
    with keyed.client() as c:
        missing = c.request(method, path)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert c.request(method, path, headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert c.request(method, path, headers=ALICE).status_code == 403  # an API key is not the admin token
        assert c.request(method, path, headers={"Authorization": "Basic abc"}).status_code == 401
        ok = c.request(method, path, headers=keyed.admin)
        assert ok.status_code in (200, 202, 404), ok.text  # 404: the example job / engine does not exist


def test_job_routes_need_a_key(keyed: Server) -> None:
    with keyed.client() as c:
        assert c.get("/v1/jobs").status_code == 401
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.post("/v1/jobs", json={"prompt": "x"}).status_code == 401
        assert c.get("/v1/events").status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert c.get("/healthz").status_code == 200
        assert c.get("/metrics").status_code == 401 and c.get("/metrics", headers=ALICE).status_code == 200


def test_users_see_and_cancel_only_their_own_jobs(keyed: Server) -> None:
    with keyed.client() as c:
        mine = c.post("/v1/jobs", headers=ALICE, json={"prompt": "alice [sim:hang]", "deadline_s": 20}).json()
        assert mine["owner"] == "alice"
        jid = mine["id"]
        assert c.get(f"/v1/jobs/{jid}", headers=BOB).status_code == 404
        assert c.post(f"/v1/jobs/{jid}/cancel", headers=BOB).status_code == 404
        assert c.get(f"/v1/jobs/{jid}/events", headers=BOB).status_code == 404
        assert jid not in [j["id"] for j in c.get("/v1/jobs", headers=BOB).json()["jobs"]]
        assert jid in [j["id"] for j in c.get("/v1/jobs", headers=ALICE).json()["jobs"]]
        assert jid in [j["id"] for j in c.get("/v1/jobs", headers=keyed.admin).json()["jobs"]]  # admin sees all
        assert job_status(c, jid, BOB).get("status") is None
        assert c.post(f"/v1/jobs/{jid}/cancel", headers=ALICE).status_code == 202
        eventually(lambda: job_status(c, jid, ALICE)["status"] == "cancelled", what="alice's cancel")


def test_idempotency_keys_are_per_user(keyed: Server) -> None:
    with keyed.client() as c:
        body = {"prompt": "same", "max_tokens": 1, "idempotency_key": "k1"}
        a1 = c.post("/v1/jobs", headers=ALICE, json=body).json()
        b1 = c.post("/v1/jobs", headers=BOB, json=body).json()
        a2 = c.post("/v1/jobs", headers=ALICE, json=body)
        assert a1["id"] != b1["id"]  # bob does not get alice's job
        assert a2.json()["id"] == a1["id"] and a2.headers.get("idempotent-replayed") == "true"
        assert a1["idempotency_key"] == b1["idempotency_key"] == "k1"


def test_openai_sdk_with_api_keys(keyed: Server) -> None:
    with openai.OpenAI(base_url=keyed.url + "/v1", api_key="key-bob-0123456789ab", max_retries=0) as bob:
        resp = bob.completions.create(model="sim", prompt="hi", max_tokens=2)
        job_id = resp.model_extra["llmsup"]["job_id"]
    with keyed.client() as c:
        assert job_status(c, job_id, BOB)["owner"] == "bob"
        assert c.get(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 404
    with openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_generated_admin_token_file(keyed: Server) -> None:
    path = keyed.run_dir / "admin_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(keyed.admin_token) >= 32
    assert re.search(r"admin token written to .*admin_token", keyed.log_path.read_text())
    with keyed.client() as c:
        assert c.get("/admin/engines", headers=keyed.admin).status_code == 200


def test_the_run_directory_is_private(real_server: Server) -> None:
    run = real_server.run_dir  # the real server's: its store, its cluster's connection files
    assert stat.S_IMODE(run.stat().st_mode) == 0o700 and stat.S_IMODE((run / "ipython").stat().st_mode) == 0o700
    private = ["jobs.sqlite", "jobs.sqlite-wal", "jobs.sqlite-shm", "admin_token", "server.json", "processes.json"]
    connection_files = list((run / "ipython" / "profile_llmsup" / "security").glob("ipcontroller-*.json"))
    assert connection_files
    for path in [run / name for name in private] + connection_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_with_keys_a_foreign_host_header_is_accepted_but_not_without_a_key(keyed: Server) -> None:
    with keyed.client() as c:
        for path in ("/healthz", "/v1/jobs", "/admin/engines"):
            assert c.get(path, headers={"Host": "llmsup.example", **keyed.admin}).status_code == 200
        assert c.get("/v1/jobs", headers={"Host": "llmsup.example"}).status_code == 401


def test_event_streams_per_owner_are_capped_until_one_closes(keyed: Server) -> None:
    with keyed.client() as c:
        with c.stream("GET", "/v1/events", headers=ALICE) as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # (kept: a dropped iterator closes the connection)
            next(lines)  # the snapshot: the stream is open
            second = c.get("/v1/events", headers=ALICE)
            assert second.status_code == 429 and second.headers["retry-after"]
        with c.stream("GET", "/v1/events", headers=BOB) as bobs:  # another owner has a slot of their own
            assert bobs.status_code == 200

        def reopened() -> bool:  # the server frees alice's slot as soon as it sees her first stream close
            with c.stream("GET", "/v1/events", headers=ALICE) as again:
                return again.status_code == 200

        eventually(reopened, timeout=10, what="alice's stream slot given back")


# unit level ------------------------------------------------------------------------------------


def test_keys_are_required_on_loopback_too_with_a_generated_key_kept_across_restarts(tmp_path: Path) -> None:
    local = auth.Auth.from_settings(Settings(run_dir=tmp_path, host="127.0.0.1"))
    assert local.keys_required
    key_file = tmp_path / "api_key"  # none configured: one is generated, readable by its owner only
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and local.key_file == key_file.resolve()
    key = key_file.read_text().strip()
    assert local.owner_of(key) == "default"
    again = auth.Auth.from_settings(Settings(run_dir=tmp_path, host="0.0.0.0"))  # a restart: the same key
    assert again.owner_of(key) == "default" and key_file.read_text().strip() == key
    given = auth.Auth.from_settings(Settings(run_dir=tmp_path, api_keys="sk-x-0123456789abcdef"))
    assert given.owner_of("sk-x-0123456789abcdef") and given.owner_of(key) is None and given.key_file is None
    assert not key_file.exists()  # the generated key is void once keys are given: no client sends it
    assert auth.is_loopback("::1") and auth.is_loopback("localhost") and not auth.is_loopback("10.0.0.1")


def test_keys_off_is_open_mode_and_vllm_api_key_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not auth.Auth.from_settings(Settings(run_dir=tmp_path / "a", require_api_keys="off")).keys_required
    monkeypatch.setenv("VLLM_API_KEY", "sk-from-env-0123456789")
    env = auth.Auth.from_settings(Settings(run_dir=tmp_path / "b"))
    assert env.keys_required and env.owner_of("sk-from-env-0123456789") and env.key_file is None
    flag = auth.Auth.from_settings(Settings(run_dir=tmp_path / "c", api_keys="sk-flag-0123456789"))  # the flag wins
    assert flag.owner_of("sk-flag-0123456789") and flag.owner_of("sk-from-env-0123456789") is None


def test_configured_admin_token_is_used_and_not_written(tmp_path: Path) -> None:
    auth.write_secret(tmp_path / "admin_token", "generated-by-an-earlier-run")
    a = auth.Auth.from_settings(Settings(run_dir=tmp_path, admin_token="s3cret-token-0123456789"))
    assert a.is_admin("s3cret-token-0123456789") and not a.is_admin("s3cret-token-012345678N") and not a.is_admin(None)
    assert not (tmp_path / "admin_token").exists()


def test_comparisons_are_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    a = auth.Auth(admin_token="adm", keys=auth.parse_keys("alice:k1, k2\nbob:k3"), keys_required=True)
    assert a.owner_of("k1") == "alice" and a.owner_of("k3") == "bob" and a.owner_of("k2").startswith("key-")
    assert len(calls) == 9  # every key compared, even after a match
    assert all(len(x) == len(y) == 32 for x, y in calls)  # digests: the length of a secret does not leak
    assert a.is_admin("adm") and len(calls) == 10
