"""One request cannot stall the server nor make it store or return without bound: JSON schemas are checked in a
worker process (a deadline interrupt is not delayed by a quadratic one), and the request budgets are 400s that name
the limit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from llmsup.web.schema_check import SchemaChecker, SchemaTooComplex
from support.inprocess import InProcessApp, in_process
from support.waiting import eventually_async

pytestmark = pytest.mark.timeout(120)


def quadratic_schema(n: int) -> dict[str, Any]:
    """Valid JSON, an invalid schema whose ``uniqueItems`` check jsonschema does pair by pair (mixed types)."""
    return {"type": [x for i in range(n // 2) for x in (i, f"a{i}")]}


def chat(schema: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


async def test_a_128_job_request_with_100000_allowed_ids_is_refused_naming_the_budget(web: InProcessApp) -> None:
    body = {"prompt": "hi", "n": 128, "allowed_token_ids": list(range(100_000)), "max_tokens": 4}
    r = await web.http.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "max_request_job_bytes" in err["message"] and err["code"] == "request_budget_exceeded", err
    assert web.supervisor.store.count(JobStatus.QUEUED) == 0  # refused before any job existed
    one = await web.http.post("/v1/completions", json={**body, "n": 1, "priority": -1000})  # one job is within the
    assert one.status_code == 403, one.text  # budget: refused later, for its priority (no job waits here)


async def test_logprob_records_have_a_budget(web: InProcessApp) -> None:
    body = {"prompt": "hi", "n": 128, "max_tokens": 100_000, "logprobs": 5}
    r = await web.http.post("/v1/completions", json=body)
    assert r.status_code == 400 and "max_request_logprobs" in r.json()["error"]["message"], r.text


async def test_a_superscript_logit_bias_key_is_a_400(web: InProcessApp) -> None:
    r = await web.http.post("/v1/completions", json={"prompt": "hi", "logit_bias": {"²": 1}})
    assert r.status_code == 400, r.text


async def test_prompt_length_is_checked_before_tokenizing(web: InProcessApp) -> None:
    limit = web.settings.max_prompt_chars
    r = await web.http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * (limit + 1)}]})
    assert r.status_code == 400 and "max_prompt_chars" in r.text, r.text


async def test_schema_checker_refuses_what_it_cannot_check_in_time() -> None:
    checker = SchemaChecker(time_limit_s=0.5, max_chars=1_000_000)
    try:
        assert await checker.check('{"type": "object"}') is None
        assert "is not valid" in (await checker.check('{"type": 5}') or "")
        with pytest.raises(SchemaTooComplex, match="within 0.5 s"):
            await checker.check(__import__("json").dumps(quadratic_schema(40_000)))
        assert await checker.check('{"type": "string"}') is None  # a new worker took over
    finally:
        checker.close()


@pytest.mark.settings(engines=1)
async def test_a_quadratic_schema_does_not_delay_a_deadline_interrupt(sup: Supervisor, tmp_path: Path) -> None:
    """The web app (its own never-started supervisor: no engine refuses structured outputs before the check) and a
    supervisor with a runaway share one event loop, as in a server. What the loop can delay is the watchdog's
    SIGINT: its moment is read from the interrupt counter, polled every 2 ms (on the loop too: a blocked loop
    shows up as a late poll)."""
    sigints = sup.metrics.interrupts.labels("sigint")
    async with in_process(tmp_path / "web") as web:
        hang = sup.submit(JobRequest("spin [sim:hang]", deadline_s=1.0)).job
        running = await eventually_async(lambda: _running(sup, hang.id), what="the runaway running", interval=0.002)
        request = asyncio.ensure_future(web.http.post("/v1/chat/completions", json=chat(quadratic_schema(6_000)),
                                                      timeout=60))
        await eventually_async(lambda: sigints._value.get() > 0, what="the SIGINT", interval=0.002)
        late = sup.clock() - (running.started_at + 1.0)
        asked = not request.done()  # the request was in flight across the deadline
        done = await sup.wait(hang.id, 30)
        response = await request
    assert asked and done.status is JobStatus.TIMED_OUT
    assert late < 0.05, f"SIGINT sent {late * 1000:.0f} ms after the deadline"
    assert response.status_code == 400, response.text
    assert "schema" in response.json()["error"]["message"]


def _running(sup: Supervisor, job_id: str) -> Any:
    job = sup.store.get(job_id)
    return job if job is not None and job.status is JobStatus.RUNNING and job.started_at else None


async def test_loop_lag_is_a_metric(web: InProcessApp) -> None:
    from prometheus_client import CollectorRegistry

    from llmsup.supervisor.metrics.loop_lag import LoopLag

    text = (await web.http.get("/metrics")).text  # the app's own monitor runs from its start
    assert "llmsup_event_loop_lag_seconds_count" in text and "llmsup_event_loop_lag_max_seconds" in text
    cpu = next(line for line in text.splitlines() if line.startswith("process_cpu_seconds_total "))
    assert float(cpu.split()[1]) > 0  # the supervisor's own CPU seconds
    lag = LoopLag(CollectorRegistry())
    lag.observe(0.2, now=1000.0)
    lag.observe(0.01, now=1001.0)
    assert lag.worst._value.get() == 0.2 and lag.lag._sum.get() == pytest.approx(0.21)
    lag.observe(0.01, now=1070.0)  # the 0.2 s is over a minute old
    assert lag.worst._value.get() == 0.01
