"""Logs people can read: one line per job event (the core on a fake cluster), JSON lines with job and engine
fields as keys, and the server's one log handler."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from llmsup.engines.logformat import JsonFormatter
from llmsup.engines.messages import JobResult
from llmsup.supervisor.cli import logsetup
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.requests import JobRequest
from test_core_ladder import key_of, make_core

pytestmark = pytest.mark.timeout(10)


def job_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "llmsup.jobs"]


def test_one_line_per_job_event_with_its_fields(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmsup.jobs")
    core, _, clock = make_core(tmp_path, engines=1)
    job = core.submit(JobRequest(prompt="p", deadline_s=5, max_tokens=3, priority=2), clock.now).job
    clock.advance(0.5)
    core.dispatch_ready(clock.now)
    key = key_of(core, job.id)
    core.report(ev.TaskStarted(key), clock.now)
    clock.advance(0.25)
    core.report(ev.TokenPiece(key, 0, "a "), clock.now)
    core.report(ev.TokenPiece(key, 1, "b "), clock.now)  # not the first: no line
    clock.advance(0.25)
    core.report(ev.JobReply(key, result=JobResult("completed", "a b ", 2, "stop")), clock.now)
    lines = job_lines(caplog)
    assert [r.event for r in lines] == ["submitted", "dispatched", "first_token", "finished"]  # type: ignore[attr-defined]
    assert all(r.job_id == job.id for r in lines)  # type: ignore[attr-defined]
    submitted, dispatched, first, finished = (r.getMessage() for r in lines)
    assert submitted == f"job={job.id} submitted: priority 2, deadline 5s, max_tokens 3"
    assert dispatched == f"job={job.id} dispatched to engine=0 host=h pid=1000 gpu=cpu: attempt 1, queued 0.500s"
    assert first == f"job={job.id} first token after 0.250s on engine=0 host=h pid=1000 gpu=cpu"
    assert finished == (f"job={job.id} finished succeeded after 1.000s (ran 0.500s, 2 tokens, attempt 1) "
                        "on engine=0 host=h pid=1000 gpu=cpu")
    assert (lines[3].status, lines[3].engine, lines[3].pid, lines[3].gpu) == (  # type: ignore[attr-defined]
        "succeeded", 0, 1000, "cpu")


def test_requeued_and_cancelled_jobs_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmsup.jobs")
    core, _, clock = make_core(tmp_path, engines=1)
    job = core.submit(JobRequest(prompt="p"), clock.now).job
    core.dispatch_ready(clock.now)
    core.report(ev.EngineUnregistered(0), clock.now)
    queued = core.submit(JobRequest(prompt="q"), clock.now).job
    core.cancel(queued.id, clock.now)
    messages = [r.getMessage() for r in job_lines(caplog)]
    assert any(m.startswith(f"job={job.id} re-queued from engine=0 host=h pid=1000 gpu=cpu: ") for m in messages)
    assert any(m.startswith(f"job={queued.id} finished cancelled after ") and m.endswith(": cancelled by user")
               for m in messages)


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("llmsup.supervisor", logging.WARNING, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_tags_and_extras_as_keys() -> None:
    fmt = JsonFormatter()
    data = json.loads(fmt.format(record("job=%s engine=3 host=h1 pid=42 gpu=0,1 step=sigint elapsed=0.1s", "job-x")))
    assert {k: data[k] for k in ("level", "logger", "job_id", "engine", "host", "pid", "gpu")} == {
        "level": "WARNING", "logger": "llmsup.supervisor", "job_id": "job-x", "engine": 3, "host": "h1", "pid": 42,
        "gpu": "0,1"}
    assert data["time"].endswith("+00:00") and data["message"].startswith("job=job-x engine=3")
    extra = json.loads(fmt.format(record("job=job-y re-queued", job_id="job-z", attempt=2, color_message="\x1b[1m")))
    assert extra["job_id"] == "job-z" and extra["attempt"] == 2 and "color_message" not in extra
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("engine driver failed")
        failed.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(fmt.format(failed))["exc_info"]
    assert "engine" not in json.loads(fmt.format(record("re-engine=2 is not a tag")))


def test_server_logging_is_one_handler_in_the_chosen_format(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logsetup.configure("warning", "json")
        logging.getLogger("uvicorn.error").warning("Uvicorn running on http://127.0.0.1:8000")
        logging.getLogger("llmsup.jobs").info("not shown at warning")
        lines = capsys.readouterr().err.splitlines()
        assert [json.loads(line)["logger"] for line in lines] == ["uvicorn.error"]
        logsetup.configure("info", "text")
        logging.getLogger("llmsup.jobs").info("job=job-1 submitted")
        assert capsys.readouterr().err.rstrip().endswith("INFO llmsup.jobs: job=job-1 submitted")
    finally:
        for handler in list(root.handlers):
            if handler not in saved[0]:
                root.removeHandler(handler)
        root.setLevel(saved[1])
        logsetup._installed = None
