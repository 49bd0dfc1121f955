"""Engine tracebacks reach the operator: one supervisor log line with job id and engine tag, the job's
``error_detail`` kept in the store, and shown by ``GET /v1/jobs/{id}`` to admins only."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmsup.supervisor.core.jobs import EngineRef, Job, JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.core.transitions import transition
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.store import SQLiteStore
from support.live import LiveServer as Server
from support.live import serving

pytestmark = [pytest.mark.real, pytest.mark.timeout(120)]
ERROR_PROMPT = "fail here [sim:error]"
ALICE = {"Authorization": "Bearer key-alice-0123456789"}


def assert_engine_traceback(detail: str | None) -> None:
    assert detail is not None and detail.startswith("Traceback (most recent call last)")
    assert "sim.py" in detail and "RuntimeError: sim: scripted error" in detail


def failure_logs(caplog: pytest.LogCaptureFixture, job_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "llmsup.supervisor" and f"job={job_id} failed" in r.getMessage()]


async def engine_error_reaches_the_operator(sup: Supervisor, caplog: pytest.LogCaptureFixture) -> Job:
    caplog.set_level(logging.ERROR, "llmsup.supervisor")
    job = await sup.wait(sup.submit(JobRequest(ERROR_PROMPT, max_tokens=5)).job.id, 30)
    assert job.status is JobStatus.FAILED and job.error == "RuntimeError: sim: scripted error"
    assert_engine_traceback(job.error_detail)
    assert sup.store.get(job.id).error_detail == job.error_detail  # stored, not only in memory
    (logged,) = failure_logs(caplog, job.id)  # once
    assert logged.levelno == logging.ERROR
    assert f"engine={job.engine.id} " in logged.getMessage() and f"pid={job.engine.pid}" in logged.getMessage()
    assert_engine_traceback(logged.getMessage().split("\n", 1)[1])
    ok = await sup.wait(sup.submit(JobRequest("still fine", max_tokens=3)).job.id, 30)
    assert ok.status is JobStatus.SUCCEEDED and ok.error_detail is None
    return job


@pytest.mark.settings(engines=1)
async def test_engine_error_keeps_its_traceback(sup: Supervisor, caplog: pytest.LogCaptureFixture) -> None:
    await engine_error_reaches_the_operator(sup, caplog)


@pytest.mark.settings(engines=1, slots_per_engine=4)
async def test_batched_engine_error_keeps_its_traceback(sup: Supervisor, caplog: pytest.LogCaptureFixture) -> None:
    await engine_error_reaches_the_operator(sup, caplog)


OLD_SCHEMA = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, status TEXT NOT NULL, priority INTEGER NOT NULL,
                   not_before REAL NOT NULL, expires_at REAL NOT NULL, owner TEXT, idempotency_key TEXT UNIQUE,
                   data TEXT NOT NULL);
"""


def test_a_store_written_before_error_detail_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = Job(prompt="from an older llmsup", created_at=5.0).with_changes(seq=1)
    data = old.to_dict()
    del data["error_detail"]  # as the older build wrote it
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO jobs VALUES (?, 1, 'queued', 0, 0, 605, NULL, NULL, ?)", (old.id, json.dumps(data)))
    db.commit()
    db.close()
    store = SQLiteStore(path)
    try:
        assert store.get(old.id) == old and old.error_detail is None
        ran = transition(old, JobStatus.RUNNING, 6.0, engine=EngineRef(1, "h", 2, ""))
        store.put(transition(ran, JobStatus.FAILED, 7.0, error="E: x", error_detail="Traceback ...\nE: x"))
        assert store.get(old.id).error_detail == "Traceback ...\nE: x"
        column = store._db.execute("SELECT error_detail FROM jobs WHERE id=?", (old.id,)).fetchone()[0]
        assert column == "Traceback ...\nE: x"
    finally:
        store.close()
    reopened = SQLiteStore(path)  # the migration runs once; opening again changes nothing
    try:
        assert reopened.get(old.id).error_detail == "Traceback ...\nE: x"
    finally:
        reopened.close()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("detail"), engines=1, require_api_keys="on",
                 api_keys="alice:key-alice-0123456789") as live:
        yield live


def test_only_admins_see_the_engine_traceback(keyed: Server) -> None:
    with keyed.client() as c:
        created = c.post("/v1/jobs", json={"prompt": ERROR_PROMPT, "max_tokens": 5}, headers=ALICE)
        assert created.status_code == 202 and "error_detail" not in created.json()
        job_id = created.json()["id"]
        mine = c.get(f"/v1/jobs/{job_id}?wait_s=30", headers=ALICE).json()
        assert mine["status"] == "failed" and mine["error"] == "RuntimeError: sim: scripted error"
        assert "error_detail" not in mine  # the owner sees the error, not the engine's code
        assert all("error_detail" not in j for j in c.get("/v1/jobs", headers=ALICE).json()["jobs"])
        admin = c.get(f"/v1/jobs/{job_id}", headers=keyed.admin).json()
        assert_engine_traceback(admin["error_detail"])
        listed = [j for j in c.get("/v1/jobs", headers=keyed.admin).json()["jobs"] if j["id"] == job_id]
        assert_engine_traceback(listed[0]["error_detail"])
        exported = c.get("/metrics", headers=ALICE).text  # the malformed-message counter is there from the start, at zero
        assert 'llmsup_malformed_messages_total{channel="stream"} 0.0' in exported
        assert 'llmsup_malformed_messages_total{channel="control"} 0.0' in exported
    log = keyed.log_path.read_text(errors="replace")
    assert log.count(f"job={job_id} failed on engine=") == 1 and "RuntimeError: sim: scripted error" in log
