"""The Python client (sync and async) against a server with 2 sim engines.

The server is started once for the module: in-process (``support.inprocess_server``), and a real ``llmsup serve``
(``support.live.serving``) for the tests that reach its IPyParallel cluster. Every test leaves no job running.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from llmsup.supervisor import cli
from llmsup.supervisor.client import (
    AsyncClient,
    AuthError,
    BorrowError,
    Client,
    InvalidRequest,
    JobHandle,
    JobTimeout,
    LlmsupError,
    NotFound,
    QueueFull,
    ServerUnreachable,
)
from llmsup.supervisor.client.base import SSEParser, TextTracker, error_from
from support.inprocess_server import Server, serving_in_process
from support.live import free_port, serving
from support.waiting import eventually

pytestmark = pytest.mark.timeout(120)
QUEUE_MAX = 6
SLOW = "[sim:slow=0.02] "


ON_A_REAL_CLUSTER = pytest.mark.parametrize("server", ["real"], indirect=True)  # the notebook's side door: IPyParallel


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """In-process, or ``llmsup serve`` for the tests that reach its cluster (parametrized ``"real"``)."""
    kind = getattr(request, "param", "inprocess")
    serve = serving if kind == "real" else serving_in_process
    with serve(tmp_path_factory.mktemp(f"client-{kind}"), queue_max=QUEUE_MAX) as live:
        yield live


@pytest.fixture
def env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    for name, value in server.client_env.items():
        monkeypatch.setenv(name, value)
    for name in ("LLMSUP_ADMIN_TOKEN", "LLMSUP_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return server


@pytest.fixture
def client(env: Server) -> Iterator[Client]:
    with Client() as c:  # found from the environment, admin token from the run directory
        yield c
        for h in c.jobs(status=["queued", "running"]):
            c.kill(h.id)
        eventually(lambda: not c.jobs(status=["queued", "running"]), 20, "jobs left by the test to end")


def running_with_tokens(h: JobHandle, n: int = 3) -> bool:
    h.refresh()
    return h.data["status"] == "running" and h.data["tokens"] >= n


# finding the server ------------------------------------------------------------------------
def test_finds_server_from_run_dir(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMSUP_URL", raising=False)
    monkeypatch.setenv("LLMSUP_RUN_DIR", str(server.run_dir))
    with Client() as c:
        assert c.url == json.loads((server.run_dir / "server.json").read_text())["url"] == server.url
        assert c.ready()
        assert len(c.engines()) == 2  # admin token read from <run-dir>/admin_token


def test_url_argument_and_env_win_over_run_dir(server: Server, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("LLMSUP_URL", server.url)
    monkeypatch.setenv("LLMSUP_RUN_DIR", str(tmp_path))  # no server.json there
    with Client() as c:
        assert c.url == server.url and c.endpoint.source == "LLMSUP_URL"
    with Client(url=server.url + "/") as c:
        assert c.url == server.url and c.ready()


def test_unreachable_server_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url=url, timeout=2) as c:
        assert not c.ready()
        with pytest.raises(ServerUnreachable, match="cannot reach llmsup") as info:
            c.submit("hello")
        assert url in str(info.value) and "url argument" in str(info.value)
        with pytest.raises(ServerUnreachable):
            c.wait_ready(timeout=0.2)


# jobs ---------------------------------------------------------------------------------------
def test_submit_and_wait(client: Client) -> None:
    h = client.submit("alpha beta gamma", max_tokens=12, deadline_s=20)
    assert h.id.startswith("job-") and h.data["status"] in ("queued", "running")
    assert h.wait(30, check=True) is h
    assert h.status == "succeeded" and h.tokens == 12
    assert h.output.split()[:4] == ["alpha", "beta", "gamma", "alpha"]
    assert h.engine["pid"] in {e["pid"] for e in client.engines()}
    assert client.job(h.id).output == h.output
    assert h.id in {j.id for j in client.jobs(status="succeeded")}


def test_status_and_output_refresh_while_running(client: Client) -> None:
    h = client.submit(SLOW + "one two three", max_tokens=40, deadline_s=20)
    eventually(lambda: h.status == "running", what="running")
    first = eventually(lambda: h.output, what="some output")
    eventually(lambda: len(h.output) > len(first), what="more output")
    h.wait(30)
    assert h.status == "succeeded" and h.output.startswith(first) and h.tokens == 40


def test_idempotency_key_returns_the_same_job(client: Client) -> None:
    key = f"nb-{time.time_ns()}"
    a = client.submit("same", max_tokens=4, idempotency_key=key)
    b = client.submit("same", max_tokens=4, idempotency_key=key)
    assert a.id == b.id
    a.wait(30)


@pytest.mark.parametrize("use_sse", [True, False], ids=["events", "polling"])
def test_stream_yields_text_as_it_is_generated(client: Client, use_sse: bool) -> None:
    client.core._sse = None if use_sse else False
    h = client.submit(SLOW + "stream these words", max_tokens=25, deadline_s=20)
    t0 = time.monotonic()
    arrivals = [(time.monotonic() - t0, piece) for piece in h.stream(timeout=30)]
    assert h.status == "succeeded"
    assert "".join(p for _, p in arrivals) == h.output
    assert len(arrivals) >= 5, arrivals  # many pieces, not one at the end
    assert arrivals[-1][0] - arrivals[0][0] > 0.2  # the first came well before the last
    if use_sse:
        assert client.core._sse is True  # the server's event stream was used


def test_stream_of_a_finished_job_gives_its_output(client: Client) -> None:
    h = client.submit("done already", max_tokens=6).wait(30)
    assert "".join(h.stream()) == h.output


def test_runaway_is_interrupted_at_its_deadline_with_partial_output(client: Client) -> None:
    h = client.submit("[sim:hang] one two three", deadline_s=1)
    h.wait(20)
    assert h.status == "timed_out"
    assert h.output == "one two three one "  # the tokens before the hang are kept
    assert "deadline" in h.error
    engine_pid = h.engine["pid"]
    assert engine_pid in {e["pid"] for e in client.engines()}  # interrupted, not killed


def test_wait_timeout_then_cancel_keeps_partial_output(client: Client) -> None:
    h = client.submit(SLOW + "long one", max_tokens=2000, deadline_s=60)
    with pytest.raises(JobTimeout) as info:
        h.wait(0.3)
    assert isinstance(info.value, TimeoutError)
    eventually(lambda: running_with_tokens(h), what="tokens")
    h.cancel().wait(20)
    assert h.status == "cancelled" and h.output and h.tokens >= 3


def test_admin_kill_of_a_running_job(client: Client) -> None:
    h = client.submit(SLOW + "kill me", max_tokens=2000, deadline_s=60)
    eventually(lambda: running_with_tokens(h), what="tokens")
    client.kill(h.id)
    h.wait(20)
    assert h.status == "cancelled" and "killed by admin" in h.error and h.output


def test_errors_carry_the_server_message_and_status(client: Client, env: Server, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="max_tokens") as bad:
        client.submit("x", max_tokens=0)
    assert bad.value.status_code == 422 and isinstance(bad.value, ValueError)
    with pytest.raises(NotFound, match="job-nope") as missing:
        client.job("job-nope")
    assert missing.value.status_code == 404
    with Client(admin_token="wrong") as c, pytest.raises(AuthError) as wrong:
        c.engines()
    assert wrong.value.status_code == 403
    with Client(run_dir=tmp_path) as c, pytest.raises(AuthError, match="admin token") as none:
        c.engines()  # URL from LLMSUP_URL, but no admin token in this run dir
    assert none.value.status_code == 401


def test_queue_full_says_when_to_retry(client: Client) -> None:
    handles = []
    with pytest.raises(QueueFull) as info:
        for _ in range(2 + QUEUE_MAX + 1):  # 2 running, then the queue fills
            handles.append(client.submit(SLOW + "fill", max_tokens=2000, deadline_s=60))
    assert info.value.status_code == 429 and info.value.retry_after and info.value.retry_after > 0
    assert len(handles) >= QUEUE_MAX
    for h in handles:
        h.cancel()


def test_wait_all_and_progress_bars(client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = client.submit_many([f"batch {i} [sim:slow=0.01]" for i in range(4)], max_tokens=20)
    assert client.wait_all(jobs, timeout=60) == jobs
    assert [j.status for j in jobs] == ["succeeded"] * 4
    err = capsys.readouterr().err
    assert "jobs" in err and "4/4" in err and "4 succeeded" in err
    h = client.submit(SLOW + "progress", max_tokens=50, deadline_s=20)
    assert h.progress(timeout=30, interval=0.1) is h and h.status == "succeeded"
    err = capsys.readouterr().err
    assert h.id in err and "s left" in err and "50/50" in err
    with pytest.raises(JobTimeout):
        client.wait_all([client.submit(SLOW + "slow", max_tokens=500)], timeout=0.3, progress=False)


async def test_async_client(env: Server) -> None:
    async with AsyncClient() as c:
        h = await c.submit(SLOW + "async words", max_tokens=20, deadline_s=20)
        pieces = [p async for p in h.stream(timeout=30)]
        assert h.status == "succeeded" and "".join(pieces) == h.output and len(pieces) > 3
        jobs = [await c.submit(f"a{i}", max_tokens=5) for i in range(3)]
        await c.wait_all(jobs, timeout=30)
        assert {j.status for j in jobs} == {"succeeded"}
        slow = await c.submit(SLOW + "cancel me", max_tokens=2000)
        with pytest.raises(JobTimeout):
            await slow.wait(0.2)
        await (await slow.cancel()).wait(20)
        assert slow.status == "cancelled"
        assert len(await c.engines()) == 2
        with pytest.raises(NotFound):
            await c.job("job-nope")


def test_cli_submit_wait_status_and_engines(env: Server) -> None:
    """The CLI's commands (called in this process: the console script itself is tested in test_packaging.py) on
    the client against the server: the admin token (from the run directory) opens the admin routes; job routes need
    none on loopback."""
    def llmsup(*args: str) -> subprocess.CompletedProcess[str]:
        result = CliRunner().invoke(cli.app, list(args))
        return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)

    done = llmsup("submit", "cli words", "--max-tokens", "5", "--deadline", "20", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["tokens"] == 5
    assert json.loads(llmsup("status", job["id"], "--json").stdout)["output"] == job["output"]
    engines = json.loads(llmsup("engines", "--json").stdout)
    assert len(engines["engines"]) == 2 and "starting" in engines
    timed_out = llmsup("submit", "[sim:hang] runaway", "--deadline", "1", "--wait", "--json")
    assert timed_out.returncode == 3 and json.loads(timed_out.stdout)["status"] == "timed_out"
    (own,) = json.loads(llmsup("hosts", "list", "--json").stdout)["hosts"]
    assert own["local"] and own["state"] == "up" and own["host"] in llmsup("hosts", "list").stdout
    refused = llmsup("hosts", "revoke", own["host"])  # the server's own host: refused, nothing changes
    assert refused.returncode == 1 and "error 409" in refused.stderr and "server's own" in refused.stderr
    missing = llmsup("hosts", "revoke", "no-such-host")
    assert missing.returncode == 1 and "error 404: no host 'no-such-host'" in missing.stderr


@ON_A_REAL_CLUSTER
async def test_async_borrow_engine(env: Server) -> None:
    async with AsyncClient() as c:
        async with c.borrow_engine(timeout=30) as view:
            assert {e["id"]: e["state"] for e in await c.engines()}[view.targets] == "draining"
            assert await asyncio.wrap_future(view.apply_async(sum, [1, 2, 3])) == 6
        assert {e["state"] for e in await c.engines()} == {"idle"}


# engines and the cluster ------------------------------------------------------------------------
@ON_A_REAL_CLUSTER
def test_cluster_client_reads_engine_identity(client: Client) -> None:
    from llmsup.engines.runtime import identity

    rc = client.cluster()
    try:
        ids = client.sync_cluster(rc, timeout=20)
        view = rc[ids]
        idents = dict(zip(view.targets, view.apply_sync(identity), strict=True))
        for e in client.engines():
            assert idents[e["id"]]["pid"] == e["pid"]
            assert idents[e["id"]]["backend"]["backend"] == "sim"
    finally:
        rc.close()


def test_restart_engine_replaces_its_process(client: Client) -> None:
    before = client.engines()
    victim = before[0]
    new = client.restart_engine(victim["id"], timeout=60)
    assert new["id"] not in {e["id"] for e in before} and new["pid"] != victim["pid"]
    eventually(lambda: not psutil.pid_exists(victim["pid"]), what="the old engine process to exit")
    eventually(lambda: len([e for e in client.engines() if e["state"] == "idle"]) == 2, what="2 idle engines")
    assert client.submit("after restart", max_tokens=4).wait(30).status == "succeeded"


@ON_A_REAL_CLUSTER
def test_borrow_engine_keeps_jobs_off_it(client: Client) -> None:
    rc = client.cluster()
    try:
        client.sync_cluster(rc)
        with client.borrow_engine(rc=rc, timeout=30) as view:
            borrowed = view.targets
            states = {e["id"]: e["state"] for e in client.engines()}
            assert states[borrowed] == "draining"
            jobs = client.submit_many([f"meanwhile {i}" for i in range(4)], max_tokens=6)
            assert view.apply_sync(sum, range(1000)) == 499500
            pending = view.apply_async(time.sleep, 0.5)  # still running when the block ends
            client.wait_all(jobs, timeout=30, progress=False)
        assert pending.ready()  # handed back only after the borrowed work finished
        assert all(j.engine["id"] != borrowed for j in jobs)
        assert {e["id"]: e["state"] for e in client.engines()}[borrowed] == "idle"
        after = client.submit_many([f"after {i}" for i in range(4)], max_tokens=6)
        client.wait_all(after, timeout=30, progress=False)
        assert {j.status for j in after} == {"succeeded"}
    finally:
        rc.close()


@ON_A_REAL_CLUSTER
def test_borrowed_engine_stays_drained_while_work_runs(client: Client) -> None:
    rc = client.cluster()
    try:
        client.sync_cluster(rc)
        with pytest.raises(BorrowError, match="stays drained"), \
                client.borrow_engine(rc=rc, timeout=30, release_timeout=0.2) as view:
            eid = view.targets
            ar = view.apply_async(time.sleep, 1.5)
        assert {e["id"]: e["state"] for e in client.engines()}[eid] == "draining"
        ar.get(timeout=10)
        client.drain_engine(eid, undo=True)
        assert {e["id"]: e["state"] for e in client.engines()}[eid] == "idle"
    finally:
        rc.close()


@ON_A_REAL_CLUSTER
def test_borrow_unknown_engine_fails_cleanly(client: Client) -> None:
    with pytest.raises(BorrowError, match="no engine 999"), client.borrow_engine(engine_id=999, timeout=5):
        pass
    assert {e["state"] for e in client.engines()} == {"idle"}


# without a server: event-stream parsing, retries, error mapping, headers ------------------------------
def _job(status: str, output: str = "", tokens: int = 0, attempts: int = 1) -> dict:
    return {"id": "job-1", "status": status, "output": output, "tokens": tokens, "attempts": attempts,
            "error": None, "engine": None, "params": {"max_tokens": 10}, "deadline_s": 5, "started_at": None}


def _sse(*events: tuple[str, dict]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events) + b": ping\n\n"


def test_stream_over_events_with_a_gap_and_a_retry() -> None:
    events = _sse(
        ("job", _job("running", "a ", 1)),
        ("token", {"job_id": "job-1", "seq": 0, "text": "a "}),  # already in the snapshot
        ("token", {"job_id": "job-1", "seq": 1, "text": "b "}),
        ("token", {"job_id": "job-1", "seq": 3, "text": "d "}),  # seq 2 missed: resync from GET
        ("status", {"job_id": "job-1", "status": "queued", "attempts": 1, "tokens": 0}),
        ("status", {"job_id": "job-1", "status": "running", "attempts": 2, "tokens": 0}),
        ("token", {"job_id": "job-1", "seq": 0, "text": "a "}),  # the new attempt repeats: nothing new
        ("token", {"job_id": "job-1", "seq": 1, "text": "b "}),
        ("token", {"job_id": "job-1", "seq": 2, "text": "c "}),
        ("token", {"job_id": "job-1", "seq": 3, "text": "d "}),
        ("token", {"job_id": "job-1", "seq": 4, "text": "e "}),
        ("status", {"job_id": "job-1", "status": "succeeded", "attempts": 2, "tokens": 5}),
        ("end", _job("succeeded", "a b c d e f ", 6, 2)),
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, content=events, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=_job("running", "a b c d ", 4))

    c = Client(url="http://llmsup.test", transport=httpx.MockTransport(handler))
    h = JobHandle(c, _job("queued"))
    assert list(h.stream(timeout=5)) == ["a ", "b ", "c d ", "e ", "f "]
    assert h.status == "succeeded" and h.output == "a b c d e f "


def test_stream_falls_back_to_polling_without_an_event_route() -> None:
    snapshots = iter([_job("running", "x "), _job("running", "x y "), _job("succeeded", "x y z ", 3)])
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/events"):
            return httpx.Response(404, json={"error": "Not Found"})
        if len(calls) == 2:  # the check that the job exists after the 404
            return httpx.Response(200, json=_job("running"))
        return httpx.Response(200, json=next(snapshots))

    c = Client(url="http://llmsup.test", transport=httpx.MockTransport(handler))
    assert "".join(JobHandle(c, _job("queued")).stream(poll_interval=0)) == "x y z "
    assert c.core._sse is False and sum(p.endswith("/events") for p in calls) == 1


def test_text_tracker_new_attempt_that_differs_is_given_whole() -> None:
    t = TextTracker()
    assert t.from_job(_job("running", "abc", 3)) == "abc"
    t.from_status({"status": "queued", "attempts": 1})
    t.from_status({"status": "running", "attempts": 2})
    assert t.from_token({"seq": 0, "text": "x"}) == "x"  # differs from what was given: the new text, whole
    assert t.from_token({"seq": 1, "text": "y"}) == "y"
    assert t.from_job(_job("succeeded", "xyz", 3, 2)) == "z"


def test_sse_parser_handles_multiline_data_and_comments() -> None:
    p = SSEParser()
    lines = [": ping", "event: token", 'data: {"seq": 0,', 'data: "text": "hi"}', "", "data: not json", ""]
    out = [e for e in (p.feed(line) for line in lines) if e is not None]
    assert out == [{"seq": 0, "text": "hi", "type": "token"}]


def test_error_mapping_and_auth_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    req = httpx.Request("POST", "http://x/v1/jobs")
    err = error_from(httpx.Response(429, json={"error": "queue full (5 jobs waiting)"}, headers={"Retry-After": "3"},
                                    request=req))
    assert isinstance(err, QueueFull) and err.retry_after == 3.0 and "queue full" in str(err)
    err = error_from(httpx.Response(500, text="boom", request=req))
    assert type(err) is LlmsupError and err.status_code == 500
    err = error_from(httpx.Response(401, json={"error": "API key required"}, request=req))
    assert isinstance(err, AuthError) and "LLMSUP_API_KEY" in str(err)

    for name in ("LLMSUP_URL", "LLMSUP_ADMIN_TOKEN", "LLMSUP_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "admin_token").write_text("adm\n")
    (tmp_path / "api_key").write_text("key\n")
    (tmp_path / "server.json").write_text(json.dumps({"url": "http://llmsup.test", "pid": os.getpid()}))
    os.chmod(tmp_path / "server.json", 0o600)  # as the server writes it: a file open to others is ignored
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.path] = request.headers.get("authorization")
        if request.url.path == "/admin/engines":
            return httpx.Response(200, json={"engines": []})
        return httpx.Response(200, json={"jobs": [], "count": 0})

    c = Client(run_dir=tmp_path, transport=httpx.MockTransport(handler))
    assert c.url == "http://llmsup.test"
    c.engines()
    c.jobs()
    assert seen == {"/admin/engines": "Bearer adm", "/v1/jobs": "Bearer key"}
