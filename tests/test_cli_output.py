"""What the client commands print for people (a scripted server, no engines): submit --wait streams the text as
it comes, status and engines are tables, every command's --json is the API's JSON."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clientfakes import FakeServer
from llmsup.supervisor.cli import commands as cli
from llmsup.supervisor.cli.output import job_summary
from llmsup.supervisor.client import Client

pytestmark = pytest.mark.timeout(30)
URL = "http://llmsup.test"
WIDE = {"COLUMNS": "200"}


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    for name in ("LLMSUP_URL", "LLMSUP_RUN_DIR", "LLMSUP_ADMIN_TOKEN", "LLMSUP_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "admin_token").write_text("adm\n")
    (tmp_path / "api_key").write_text("key\n")
    fake = FakeServer()
    monkeypatch.setattr(cli, "Client", functools.partial(Client, transport=fake.transport))
    monkeypatch.setenv("LLMSUP_URL", URL)
    monkeypatch.setenv("LLMSUP_RUN_DIR", str(tmp_path))
    return fake


def invoke(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli.app, list(args), env=WIDE)
    return res.exit_code, res.stdout, res.stderr


def test_submit_wait_streams_the_text_then_a_summary(server: FakeServer) -> None:
    code, out, err = invoke("submit", "hello", "--wait")
    assert code == 0 and out == "a b c \n"
    assert err.splitlines() == ["job-1, queued", "job-1, succeeded, 3 tokens"]
    assert any(s.path.endswith("/events") for s in server.seen)  # the event stream, not one final poll


def test_submit_wait_exits_3_when_the_job_did_not_succeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          server: FakeServer) -> None:
    server.final = "timed_out"
    code, out, err = invoke("submit", "hello", "--wait")
    assert code == 3 and out == "a b c \n" and err.splitlines()[-1].startswith("job-1, timed_out, 3 tokens")


def test_submit_without_wait_prints_the_job_line(server: FakeServer) -> None:
    assert invoke("submit", "hello") == (0, "job-1, queued\n", "")


def test_status_and_engines_are_tables(server: FakeServer) -> None:
    invoke("submit", "first prompt")
    invoke("submit", "second prompt " * 10)
    code, out, _ = invoke("status")
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["JOB", "STATUS", "TOKENS", "TRIES", "ENGINE", "RAN", "CREATED", "PROMPT"]
    assert [r.split()[:2] for r in rows] == [["job-2", "queued"], ["job-1", "queued"]]
    assert rows[0].rstrip().endswith("…")  # long prompts are cut
    code, out, _ = invoke("status", "job-1")
    assert code == 0 and "status    queued" in out and "prompt    first prompt" in out and "output:" in out
    server.engines[0].update(host="h", gpu="0", jobs=[{"job_id": "job-1", "running_s": 1.0}], jobs_done=4,
                             rss_mb=512.4, uptime_s=75.0, backend="vllm", model="org/m", log_file="/r/logs/engine-e0.log",
                             pool="big")
    code, out, _ = invoke("engines")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "POOL", "STATE", "HOST", "PID", "GPU", "JOBS", "DONE", "RSS", "MB",
                                              "UP", "MODEL"]
    assert lines[1].split() == ["0", "big", "idle", "h", "1000", "0", "job-1", "4", "512", "1m15s", "vllm:", "org/m"]
    assert lines[2].split()[:3] == ["1", "default", "idle"]  # a server from before pools: its one pool
    assert "engine 0 log: /r/logs/engine-e0.log" in lines


def test_kill_says_what_it_asked(server: FakeServer) -> None:
    invoke("submit", "x")
    code, out, _ = invoke("kill", "job-1")
    assert code == 0 and out.strip() == "kill asked: job-1, cancelled, 3 tokens: killed by admin"


def test_job_summary_names_where_it_ran() -> None:
    job = {"id": "job-9", "status": "failed", "tokens": 2, "attempts": 3, "error": "engine lost",
           "engine": {"id": 1, "host": "h", "pid": 7, "gpu": ""},
           "started_at": "2026-11-30T08:00:00Z", "finished_at": "2026-11-30T08:00:01.5Z"}
    assert job_summary(job) == "job-9, failed, 2 tokens, in 1.50s, on engine 1 (h pid 7, CPU), attempt 3: engine lost"
