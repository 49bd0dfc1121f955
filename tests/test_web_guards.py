"""Guards of the web layer, in process (no cluster: jobs stay queued): the Host allowlist, /metrics behind a key,
per-owner quotas (queued jobs, priority ceiling, event streams), idempotency keys per owner, min_tokens,
listing off the event loop and counts shared by live subscribers."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.core.requests import InvalidRequest, JobRequest
from llmsup.supervisor.rundir import prepare_run_dir
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings
from llmsup.supervisor.store import SQLiteStore, StoreReader
from llmsup.web import auth
from llmsup.web.app import create_app
from llmsup.web.auth import Principal
from llmsup.web.hosts import HostAllowlist, host_name
from llmsup.web.listing import SharedCounts
from llmsup.web.live import SharedStatusReads, _feed
from llmsup.web.sse import PING, EventStream

pytestmark = pytest.mark.timeout(60)
ALICE, BOB = {"Authorization": "Bearer key-alice-0123456789"}, {"Authorization": "Bearer key-bob-0123456789ab"}
GUARDED = dict(require_api_keys="on", api_keys="alice:key-alice-0123456789,bob:key-bob-0123456789ab",
               owner_queue_max=2, max_user_priority=10, sse_max_per_owner=2, sse_max_total=3, default_max_tokens=16,
               backend="sim", engines=0)


@dataclass
class App:
    http: httpx.AsyncClient
    app: FastAPI
    sup: Supervisor
    admin: dict[str, str]


async def open_app(run_dir: Path, host: str = "127.0.0.1:8000", started: bool = False,
                   **overrides: Any) -> AsyncIterator[App]:
    """The app on a supervisor without engines; ``started``: as if its owner had started it."""
    settings = Settings(run_dir=run_dir, **{**GUARDED, **overrides})
    prepare_run_dir(run_dir)
    sup = Supervisor(settings, store=SQLiteStore(settings.db_path))
    sup.started = started
    app = create_app(settings, supervisor=sup)
    try:
        async with app.router.lifespan_context(app):
            admin = {"Authorization": f"Bearer {settings.admin_token_path.read_text().strip()}"}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}", timeout=10) as http:
                yield App(http, app, sup, admin)
    finally:
        sup.store.close()


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[App]:
    async for app in open_app(tmp_path / "run"):
        yield app


@pytest.fixture
async def keyless(tmp_path: Path) -> AsyncIterator[App]:
    """Keys off (vLLM's open mode): the Host header guard is on."""
    async for app in open_app(tmp_path / "run", require_api_keys="off"):
        yield app


async def submit(a: App, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await a.http.post("/v1/jobs", headers=headers, json={"prompt": "x", **body})


# Host header (DNS rebinding) -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/v1/jobs", "/v1/models", "/admin/engines", "/docs",
                                  "/dashboard", "/v1/events"])
async def test_an_unknown_host_header_gets_400_on_every_route_when_keys_are_off(keyless: App, path: str) -> None:
    resp = await keyless.http.get(path, headers={"Host": "evil.example", **keyless.admin})
    assert resp.status_code == 400 and "Host" in resp.text
    post = await keyless.http.post("/v1/jobs", headers={"Host": "evil.example:8000", **keyless.admin},
                                   json={"prompt": "x"})
    assert post.status_code == 400 and keyless.sup.store.count(JobStatus.QUEUED) == 0  # nothing was created


async def test_with_keys_any_host_is_accepted_and_the_key_still_needed(guarded: App) -> None:
    """A Service or Ingress name reaches a keyed server; a rebinding page cannot, having no key."""
    service = {"Host": "llmsup.default.svc.cluster.local:8000"}
    assert (await guarded.http.get("/healthz", headers=service)).status_code == 200
    assert (await submit(guarded, service)).status_code == 401
    assert (await submit(guarded, {**service, **ALICE})).status_code == 202


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "LOCALHOST.:8000", "[::1]:8000", "127.0.0.2"])
async def test_local_names_are_accepted(keyless: App, host: str) -> None:
    assert (await keyless.http.get("/healthz", headers={"Host": host})).status_code == 200


def test_host_allowlist_names() -> None:
    assert host_name("Example.COM:8080") == "example.com" and host_name("[::1]:80") == "::1" and host_name("::1") == "::1"
    limited = HostAllowlist(app=None, allowed=["localhost", "10.1.2.3", "api.example"])  # type: ignore[arg-type]
    assert limited.accepts("api.example:443") and limited.accepts("10.1.2.3") and limited.accepts(None)
    assert not limited.accepts("evil.example") and not limited.accepts("10.1.2.4")
    assert HostAllowlist(app=None, allowed=["*"]).accepts("anything.example")  # type: ignore[arg-type]


def test_a_wildcard_bind_accepts_this_machines_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmsup.web import hosts

    monkeypatch.setattr(hosts, "interface_addresses", lambda: {"10.9.8.7"})
    wide = HostAllowlist(app=None, allowed=hosts.default_hosts("0.0.0.0"), wildcard_bind=True)  # type: ignore[arg-type]
    assert wide.accepts("10.9.8.7:8000") and not wide.accepts("10.9.8.6") and not wide.accepts("evil.example")
    monkeypatch.setattr(hosts, "interface_addresses", lambda: {"10.9.8.7", "192.168.77.1"})  # a bridge added later
    wide._interfaces_read -= 2
    assert wide.accepts("192.168.77.1:8000") and not wide.accepts("10.9.8.6")


async def test_allowed_hosts_setting_adds_names(tmp_path: Path) -> None:
    async for a in open_app(tmp_path / "run", host="api.example", allowed_hosts="api.example", require_api_keys="off"):
        assert (await a.http.get("/healthz")).status_code == 200
        assert (await a.http.get("/healthz", headers={"Host": "evil.example"})).status_code == 400
    async for a in open_app(tmp_path / "run2", host="anything.example", allowed_hosts="*", require_api_keys="off"):
        assert (await a.http.get("/healthz")).status_code == 200


# /metrics ---------------------------------------------------------------------------------------------------------


async def test_metrics_need_a_key_when_keys_are_on(guarded: App) -> None:
    assert (await guarded.http.get("/metrics")).status_code == 401
    assert (await guarded.http.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
    assert (await guarded.http.get("/metrics", headers=ALICE)).status_code == 200
    ok = await guarded.http.get("/metrics", headers=guarded.admin)
    assert ok.status_code == 200 and "llmsup_queue_depth" in ok.text


async def test_metrics_open_setting_and_keys_off(tmp_path: Path) -> None:
    async for a in open_app(tmp_path / "open", metrics_open=True):
        assert (await a.http.get("/metrics")).status_code == 200
    async for a in open_app(tmp_path / "off", require_api_keys="off"):
        assert (await a.http.get("/metrics")).status_code == 200


# quotas per owner ------------------------------------------------------------------------------------------------


async def test_queued_jobs_per_owner_get_429_with_retry_after(guarded: App) -> None:
    assert [(await submit(guarded, ALICE, idempotency_key=f"k{i}")).status_code for i in range(2)] == [202, 202]
    over = await submit(guarded, ALICE)
    assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
    assert "owner_queue_max" in over.json()["error"]
    replay = await submit(guarded, ALICE, idempotency_key="k0")  # a replay creates nothing: not refused
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    assert (await submit(guarded, BOB)).status_code == 202  # others are not affected
    assert all([(await submit(guarded, guarded.admin)).status_code == 202 for _ in range(3)])  # nor the admin
    oai = await guarded.http.post("/v1/completions", headers=ALICE, json={"prompt": "x", "max_tokens": 1})
    assert oai.status_code == 429 and oai.json()["error"]["code"] == "owner_queue_full"


async def test_priority_above_the_ceiling_needs_the_admin_token(guarded: App) -> None:
    refused = await submit(guarded, ALICE, priority=11)
    assert refused.status_code == 403 and "max_user_priority=10" in refused.json()["error"]
    assert (await submit(guarded, ALICE, priority=10)).status_code == 202
    admin = await submit(guarded, guarded.admin, priority=1000)
    assert admin.status_code == 202 and admin.json()["priority"] == 1000
    oai = await guarded.http.post("/v1/completions", headers=BOB, json={"prompt": "x", "max_tokens": 1, "priority": -11})
    assert oai.status_code == 403 and oai.json()["error"]["param"] == "priority"  # vLLM's scale: lower runs first
    assert (await guarded.http.get("/v1/jobs", headers=BOB)).json()["count"] == 0  # nothing was created


async def test_event_streams_are_capped_per_owner_and_in_all(guarded: App) -> None:
    slots = guarded.app.state.stream_slots
    job = (await submit(guarded, ALICE)).json()
    held = [slots.acquire("alice"), slots.acquire("alice")]  # two streams alice has open
    for path in ("/v1/events", f"/v1/jobs/{job['id']}/events"):
        resp = await guarded.http.get(path, headers=ALICE)
        assert resp.status_code == 429 and resp.headers["Retry-After"] and "sse_max_per_owner" in resp.text
    before = (await guarded.http.get("/v1/jobs", headers=ALICE)).json()["count"]
    stream = await guarded.http.post("/v1/completions", headers=ALICE, json={"prompt": "x", "stream": True})
    assert stream.status_code == 429 and stream.json()["error"]["code"] == "too_many_streams"
    assert (await guarded.http.get("/v1/jobs", headers=ALICE)).json()["count"] == before  # no job without a stream
    held.append(slots.acquire("bob"))  # 3 open in all: the total cap, for everyone, the admin included
    assert (await guarded.http.get("/v1/events", headers=guarded.admin)).status_code == 429
    for release in held:
        release()
        release()  # giving a slot back twice counts once
    assert slots.in_use == 0


async def test_an_event_stream_gives_its_slot_back_however_it_ends(guarded: App) -> None:
    slots = guarded.app.state.stream_slots

    async def forever() -> AsyncIterator[bytes]:
        while True:
            yield b": ping\n\n"
            await asyncio.sleep(0.01)

    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await EventStream(forever(), release=slots.acquire("alice"))({"type": "http"}, gone, send)
    assert slots.in_use == 0

    async def broken() -> AsyncIterator[bytes]:
        raise RuntimeError("boom")
        yield b""

    async def never() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    with pytest.raises(RuntimeError):
        await EventStream(broken(), release=slots.acquire("alice"))({"type": "http"}, never, send)
    assert slots.in_use == 0


# idempotency keys per owner --------------------------------------------------------------------------------------


async def test_no_owner_gets_another_owners_job_through_a_key(guarded: App) -> None:
    alice = (await submit(guarded, ALICE, idempotency_key="k1")).json()
    bob = (await submit(guarded, BOB, idempotency_key="k1")).json()
    admin = (await submit(guarded, guarded.admin, idempotency_key="alice/k1")).json()  # alice's old stored form
    admin_plain = (await submit(guarded, guarded.admin, idempotency_key="k1")).json()
    assert len({alice["id"], bob["id"], admin["id"], admin_plain["id"]}) == 4
    assert alice["idempotency_key"] == "k1" and admin["idempotency_key"] == "alice/k1"
    again = await submit(guarded, guarded.admin, idempotency_key="k1")
    assert again.json()["id"] == admin_plain["id"] and again.headers["idempotent-replayed"] == "true"


async def test_a_replay_of_a_job_the_caller_cannot_see_is_refused(guarded: App, monkeypatch: pytest.MonkeyPatch) -> None:
    bobs = (await submit(guarded, BOB)).json()
    monkeypatch.setattr(guarded.sup.store, "by_key", lambda key, owner=None: guarded.sup.get(bobs["id"]))
    resp = await submit(guarded, ALICE, idempotency_key="k9")
    assert resp.status_code == 409 and bobs["id"] not in resp.text


def test_owner_names_are_checked() -> None:
    for bad in ("a/b", "", "x" * 65, "sp ace", "new\nline"):
        with pytest.raises(InvalidRequest):
            JobRequest(prompt="x", owner=bad)
    with pytest.raises(ValueError, match="invalid owner name"):
        auth.parse_keys("team/a:key-1")
    assert auth.parse_keys("alice.b@x-1:k") == {"k": "alice.b@x-1"}


# bad input is a 4xx ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, body, needle", [
    ("/v1/jobs", {"prompt": "x", "max_tokens": 5, "min_tokens": 6}, "min_tokens (6) must not exceed max_tokens (5)"),
    ("/v1/jobs", {"prompt": "x", "min_tokens": 17}, "the default max_tokens (16)"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 2, "min_tokens": 3}, "min_tokens (3)"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 2,
                              "min_tokens": 3}, "min_tokens (3)"),
])
async def test_min_tokens_above_max_tokens_is_422(guarded: App, path: str, body: dict[str, Any], needle: str) -> None:
    resp = await guarded.http.post(path, headers=ALICE, json=body)
    assert resp.status_code == (422 if path == "/v1/jobs" else 400), resp.text  # the OpenAI routes answer 400
    error = resp.json()["error"]
    assert needle in (error if isinstance(error, str) else error["message"])


# listing off the loop, counts shared ----------------------------------------------------------------------------


async def test_job_lists_are_parsed_off_the_event_loop(guarded: App, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = StoreReader.list

    def spy(self: StoreReader, *args: Any, **kwargs: Any) -> list[Job]:
        threads.append(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StoreReader, "list", spy)
    ids = [(await submit(guarded, guarded.admin)).json()["id"] for _ in range(3)]
    listed = (await guarded.http.get("/v1/jobs", headers=guarded.admin, params={"limit": 2})).json()
    assert [j["id"] for j in listed["jobs"]] == ids[::-1][:2] and listed["count"] == 2
    assert threads and threading.main_thread().name not in threads


async def test_live_counts_are_computed_once_per_tick_for_all_subscribers(guarded: App) -> None:
    counts = SharedCounts(ttl_s=60)
    await submit(guarded, ALICE)
    seen = [counts.get(guarded.sup) for _ in range(1000)]  # a thousand subscribers in one tick
    assert counts.computed == 1 and seen[0]["queued"] == 1 and seen[0] == seen[-1]


async def test_a_status_change_is_read_once_for_every_live_subscriber_and_shown_to_those_who_may_see_it(
        guarded: App) -> None:
    reads = SharedStatusReads()
    counts = SharedCounts(ttl_s=60)
    principals = {"alice": Principal("alice"), "bob": Principal("bob"), "admin": Principal(None, admin=True)}
    feeds = {name: _feed(guarded.sup, principal, 0, 0.05 if name == "bob" else 3600.0, counts, reads)
             for name, principal in principals.items()}
    for feed in feeds.values():
        assert (await anext(feed)).startswith(b"event: snapshot")  # subscribed from here on
    job = (await submit(guarded, ALICE)).json()  # queued: one status event for the three feeds
    guarded.sup.hub.publish(None, {"type": "status", "job_id": "job-gone"})  # not stored: nobody is sent it
    for name in ("alice", "admin"):
        sent = await anext(feeds[name])
        assert sent.count(b"event: job") == 1 and json.loads(sent.split(b"data: ", 1)[1])["id"] == job["id"]
    assert await anext(feeds["bob"]) == PING  # bob's next write is his tick's ping: neither job is his to see
    assert reads.reads == 2  # one store read per status change, for all three subscribers
    for feed in feeds.values():
        await feed.aclose()
