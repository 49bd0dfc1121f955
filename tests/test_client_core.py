"""The client core without a server: the sync and the async client, each test run on both, against a scripted
server (``httpx.MockTransport``, tests/clientfakes.py); the CLI on top of the client; the loop thread under the
sync client."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from clientfakes import FakeCluster, FakeServer, FakeView
from llmsup.supervisor.cli import commands as cli
from llmsup.supervisor.client import (
    AsyncClient,
    AsyncJobHandle,
    BorrowError,
    Client,
    InvalidRequest,
    JobFailed,
    JobHandle,
    JobTimeout,
    NotFound,
    ServerUnreachable,
    progress,
)
from llmsup.supervisor.client.loop import LoopThread, shared_loop

pytestmark = pytest.mark.timeout(60)
URL = "http://llmsup.test"
AnyClient = Client | AsyncClient
AnyHandle = JobHandle | AsyncJobHandle


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run directory holding an admin token and an API key, and no credential in the environment."""
    for name in ("LLMSUP_URL", "LLMSUP_RUN_DIR", "LLMSUP_ADMIN_TOKEN", "LLMSUP_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "admin_token").write_text("adm\n")
    (tmp_path / "api_key").write_text("key\n")
    return tmp_path


@pytest.fixture(params=["sync", "async"])
async def client(request: pytest.FixtureRequest, server: FakeServer, run_dir: Path) -> AsyncIterator[AnyClient]:
    if request.param == "sync":
        with Client(url=URL, run_dir=run_dir, transport=server.transport) as sync_client:
            yield sync_client
    else:
        async with AsyncClient(url=URL, run_dir=run_dir, transport=server.transport) as async_client:
            yield async_client


async def call(target: AnyClient | AnyHandle, name: str, *args: Any, **kwargs: Any) -> Any:
    """The same call on either face: an async method awaited, a sync one run in a worker thread."""
    method = getattr(target, name)
    if inspect.iscoroutinefunction(method):
        return await method(*args, **kwargs)
    return await asyncio.to_thread(method, *args, **kwargs)


async def streamed(handle: AnyHandle, **kwargs: Any) -> list[str]:
    if isinstance(handle, AsyncJobHandle):
        return [piece async for piece in handle.stream(**kwargs)]
    return await asyncio.to_thread(lambda: list(handle.stream(**kwargs)))


async def borrowed(client: AnyClient, body: Callable[[FakeView], None], **kwargs: Any) -> None:
    """``body(view)`` inside ``borrow_engine``: ``async with`` on the async client, ``with`` in a thread on the sync."""
    if isinstance(client, AsyncClient):
        async with client.borrow_engine(**kwargs) as view:
            body(view)
        return

    def borrow() -> None:
        with client.borrow_engine(**kwargs) as view:
            body(view)

    await asyncio.to_thread(borrow)


def core(client: AnyClient) -> AsyncClient:
    return client.core if isinstance(client, Client) else client


# credentials -------------------------------------------------------------------------------------------
async def test_admin_token_goes_to_admin_routes_only(client: AnyClient, server: FakeServer) -> None:
    job = await call(client, "submit", "hello", max_tokens=3)
    await call(job, "wait", 5)
    assert await streamed(await call(client, "submit", "streamed")) == ["a ", "b ", "c "]
    await call(client, "jobs", status="running")
    await call(client, "job", job.id)
    await call(client, "cancel", job.id)
    await call(client, "kill", job.id)
    assert [e["id"] for e in await call(client, "engines")] == [0, 1]
    await call(client, "drain_engine", 0)
    await call(client, "undrain_engine", 0)
    await call(client, "interrupt_engine", 1)
    admin = server.requests_to(lambda s: s.path.startswith("/admin/"))
    jobs = server.requests_to(lambda s: s.path.startswith("/v1/"))
    assert len(admin) == 5 and {s.authorization for s in admin} == {"Bearer adm"}
    assert len(jobs) >= 7 and {s.authorization for s in jobs} == {"Bearer key"}


async def test_without_an_api_key_job_routes_get_no_credential(server: FakeServer, run_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (run_dir / "api_key").unlink()
    (run_dir / "admin_token").unlink()
    monkeypatch.setenv("LLMSUP_ADMIN_TOKEN", "adm")
    async with AsyncClient(url=URL, run_dir=run_dir, transport=server.transport) as c:
        await (await c.submit("hello")).wait(5)
        await c.engines()
    assert {s.authorization for s in server.seen if s.path.startswith("/v1/")} == {None}
    assert {s.authorization for s in server.seen if s.path.startswith("/admin/")} == {"Bearer adm"}


# waiting ----------------------------------------------------------------------------------------------
async def test_wait_is_a_server_long_poll(client: AnyClient, server: FakeServer) -> None:
    job = await call(client, "submit", "hello", max_tokens=3)
    assert await call(job, "wait", 10) is job
    assert job.done and job.status == "succeeded" and job.output == "a b c "
    gets = server.requests_to(lambda s: s.method == "GET")
    assert len(gets) == server.long_polls_to_end  # one request per server answer: nothing polls on this side
    assert all(0 < float(s.params["wait_s"]) <= 25 for s in gets)


async def test_wait_timeout_bounds_the_long_poll(client: AnyClient, server: FakeServer) -> None:
    job = await call(client, "submit", "forever")
    t0 = time.monotonic()
    with pytest.raises(JobTimeout, match="still queued after 0.3s"):
        await call(job, "wait", 0.3)
    assert 0.25 < time.monotonic() - t0 < 5
    assert all(float(s.params["wait_s"]) <= 0.3 for s in server.requests_to(lambda s: s.method == "GET"))


async def test_wait_check_raises_for_a_job_that_did_not_succeed(run_dir: Path) -> None:
    server = FakeServer(final="timed_out")
    async with AsyncClient(url=URL, run_dir=run_dir, transport=server.transport) as c:
        job = await c.submit("hello")
        with pytest.raises(JobFailed, match="ended timed_out") as info:
            await job.wait(5, check=True)
    assert info.value.job["status"] == "timed_out"


async def test_wait_all_without_a_bar_long_polls_one_job_at_a_time(client: AnyClient, server: FakeServer) -> None:
    jobs = await call(client, "submit_many", ["a", "b", "c"], max_tokens=3)
    assert await call(client, "wait_all", jobs, timeout=10, progress=False) == jobs
    assert [j.status for j in jobs] == ["succeeded"] * 3
    gets = server.requests_to(lambda s: s.method == "GET")
    assert len(gets) == 3 * server.long_polls_to_end and all("wait_s" in s.params for s in gets)


async def test_wait_all_with_a_bar(client: AnyClient, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = await call(client, "submit_many", ["a", "b", "c"], max_tokens=3)
    await call(client, "wait_all", jobs, timeout=10, interval=0.05)
    err = capsys.readouterr().err
    assert "jobs" in err and "3/3" in err and "3 succeeded" in err
    one = await call(client, "submit", "one more", max_tokens=3)
    assert await call(one, "progress", timeout=10, interval=0.05) is one
    assert one.id in capsys.readouterr().err
    with pytest.raises(JobTimeout, match="1 of 1 jobs not ended after 0.2s"):
        await call(client, "wait_all", [await call(client, "submit", "forever")], timeout=0.2, progress=False)


def test_sync_bars_are_drawn_in_the_callers_thread(server: FakeServer, run_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    drawn_in: set[int] = set()
    update = progress.BatchBar.update

    def recording_update(bar: progress.BatchBar, jobs: list[dict[str, Any]]) -> None:
        drawn_in.add(threading.get_ident())
        update(bar, jobs)

    monkeypatch.setattr(progress.BatchBar, "update", recording_update)
    with Client(url=URL, run_dir=run_dir, transport=server.transport) as c:
        c.wait_all(c.submit_many(["a", "b"]), timeout=10, interval=0.05)
    assert drawn_in == {threading.get_ident()}  # Jupyter sends a thread's output to the cell that started it


# streaming, errors --------------------------------------------------------------------------------------
async def test_stream_uses_the_event_stream(client: AnyClient) -> None:
    job = await call(client, "submit", "stream me")
    assert await streamed(job, timeout=10) == ["a ", "b ", "c "]
    assert job.status == "succeeded" and core(client)._sse is True


async def test_errors_are_the_same_in_both(client: AnyClient) -> None:
    with pytest.raises(InvalidRequest, match="max_tokens") as bad:
        await call(client, "submit", "x", max_tokens=0)
    assert bad.value.status_code == 422
    with pytest.raises(NotFound, match="job-nope"):
        await call(client, "job", "job-nope")


async def test_a_job_id_is_one_path_segment(client: AnyClient, server: FakeServer) -> None:
    with pytest.raises(NotFound):
        await call(client, "job", "../../admin/engines")
    assert server.seen[-1].path.startswith("/v1/jobs/") and server.seen[-1].authorization == "Bearer key"


async def test_unreachable_server(run_dir: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with Client(url=URL, run_dir=run_dir, transport=httpx.MockTransport(refuse)) as c:
        assert not c.ready()
        with pytest.raises(ServerUnreachable, match="cannot reach llmsup at http://llmsup.test"):
            await asyncio.to_thread(c.submit, "hello")


# borrowing an engine --------------------------------------------------------------------------------------
async def test_borrow_engine_drains_then_hands_back(client: AnyClient, server: FakeServer) -> None:
    states: list[str] = []
    await borrowed(client, lambda view: states.append(server.engines[view.targets]["state"]),
                   rc=FakeCluster([0, 1]), timeout=5)
    assert states == ["draining"] and server.engines[0]["state"] == "idle"
    drains = server.requests_to(lambda s: s.path == "/admin/engines/0/drain")
    assert [s.params for s in drains] == [{}, {"undo": "true"}]


async def test_borrowed_engine_stays_drained_while_work_runs(client: AnyClient, server: FakeServer) -> None:
    def leave_work_running(view: FakeView) -> None:
        view.hung = True

    with pytest.raises(BorrowError, match="stays drained"):
        await borrowed(client, leave_work_running, rc=FakeCluster([0, 1]), timeout=5, release_timeout=0.1)
    assert server.engines[0]["state"] == "draining"


async def test_borrow_unknown_engine(client: AnyClient, server: FakeServer) -> None:
    with pytest.raises(BorrowError, match="no engine 9"):
        await borrowed(client, lambda view: None, rc=FakeCluster([0, 1]), engine_id=9, timeout=5)
    assert {e["state"] for e in server.engines.values()} == {"idle"}


# the CLI -------------------------------------------------------------------------------------------------
@pytest.fixture
def cli_server(server: FakeServer, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    monkeypatch.setattr(cli, "Client", functools.partial(Client, transport=server.transport))
    monkeypatch.setenv("LLMSUP_URL", URL)
    monkeypatch.setenv("LLMSUP_RUN_DIR", str(run_dir))
    return server


def test_cli_submit_wait_prints_the_ended_job(cli_server: FakeServer) -> None:
    res = CliRunner().invoke(cli.app, ["submit", "hello", "--max-tokens", "3", "--deadline", "5", "--wait", "--json"])
    assert res.exit_code == 0, res.output
    job = json.loads(res.stdout)
    assert job["status"] == "succeeded" and job["output"] == "a b c "
    assert all("wait_s" in s.params for s in cli_server.requests_to(lambda s: s.method == "GET"))


def test_cli_submit_wait_exits_3_unless_succeeded(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeServer(final="timed_out")
    monkeypatch.setattr(cli, "Client", functools.partial(Client, transport=server.transport))
    res = CliRunner().invoke(cli.app, ["submit", "hello", "--wait", "--json", "--url", URL, "--run-dir", str(run_dir)])
    assert res.exit_code == 3 and json.loads(res.stdout)["status"] == "timed_out"


def test_cli_sends_the_admin_token_to_admin_routes_only(cli_server: FakeServer) -> None:
    runner = CliRunner()
    job = json.loads(runner.invoke(cli.app, ["submit", "hello", "--json"]).stdout)
    assert job["status"] == "queued"
    listed = json.loads(runner.invoke(cli.app, ["status", "--json"]).stdout)
    assert listed["count"] == 1 and listed["jobs"][0]["id"] == job["id"]
    assert json.loads(runner.invoke(cli.app, ["status", job["id"], "--json"]).stdout)["id"] == job["id"]
    assert json.loads(runner.invoke(cli.app, ["kill", job["id"], "--json"]).stdout)["error"] == "killed by admin"
    engines = json.loads(runner.invoke(cli.app, ["engines", "--json"]).stdout)
    assert set(engines) == {"engines", "starting"} and len(engines["engines"]) == 2
    seen = cli_server.seen
    assert {s.authorization for s in seen if s.path.startswith("/v1/")} == {"Bearer key"}
    assert {s.authorization for s in seen if s.path.startswith("/admin/")} == {"Bearer adm"}


def test_cli_errors(cli_server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    res = CliRunner().invoke(cli.app, ["submit", "hello", "--max-tokens", "0"])
    assert res.exit_code == 1 and "error 422: max_tokens" in res.stderr
    res = CliRunner().invoke(cli.app, ["status", "job-nope"])
    assert res.exit_code == 1 and "error 404: no job job-nope" in res.stderr

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    monkeypatch.setattr(cli, "Client", functools.partial(Client, transport=httpx.MockTransport(refuse)))
    res = CliRunner().invoke(cli.app, ["engines"])
    assert res.exit_code == 1 and "cannot reach the server" in res.stderr


# the loop thread under the sync client ---------------------------------------------------------------------
def test_loop_thread_closes_an_abandoned_iterator() -> None:
    closed = threading.Event()

    async def numbers() -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
        finally:
            closed.set()

    loop = shared_loop()
    pieces = loop.iterate(numbers())
    assert [next(pieces), next(pieces)] == [0, 1]
    pieces.close()
    assert closed.is_set()  # set on the loop, before close() returned


def test_loop_thread_runs_exceptions_and_refuses_its_own_thread() -> None:
    loop = LoopThread()

    async def boom() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        loop.run(boom())

    async def nested() -> None:
        loop.run(asyncio.sleep(0))

    with pytest.raises(RuntimeError, match="its own event loop"):
        loop.run(nested())
    loop.loop.call_soon_threadsafe(loop.loop.stop)
    loop.thread.join(timeout=5)
    assert not loop.thread.is_alive()
    loop.loop.close()
