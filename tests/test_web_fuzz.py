"""Schemathesis against the app's own OpenAPI spec, on a real server: no 5xx, responses match the spec.

Bounded: a few examples per operation (``LLMSUP_FUZZ_EXAMPLES``, default 12), so the whole run takes well
under two minutes. Left out: the never-ending global feed (``/v1/events``) and the engine drain / restart
routes (they would take the fuzzed cluster's engines away; ``test_web_admin`` covers them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from llmsup.supervisor.settings import Settings
from llmsup.web.app import create_app
from support.inprocess_server import Server, serving_in_process

pytestmark = pytest.mark.timeout(240)
EXAMPLES = int(os.environ.get("LLMSUP_FUZZ_EXAMPLES", "12"))
RANDOM = bool(os.environ.get("LLMSUP_FUZZ_RANDOM"))  # default: the same examples on every run


FUZZ_SETTINGS = dict(sim_token_s=0.0005, max_tokens_limit=16, default_max_tokens=8, deadline_s=5, max_deadline_s=10,
                     queue_timeout_s=10, max_prompt_chars=2000, max_body_bytes=65536)
FUZZ_SETTINGS_DEFAULT_MAX_TOKENS = 8


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving_in_process(tmp_path_factory.mktemp("fuzz"), **FUZZ_SETTINGS) as live:
        yield live


def app_spec() -> dict:
    """The spec the fuzzed server serves: the app's, with that server's limits."""
    return create_app(Settings(run_dir=Path("/nonexistent"), **FUZZ_SETTINGS)).openapi()


schema = schemathesis.openapi.from_dict(app_spec())
# 413 rejects invalid data too: a list of prompts (or token ids) past its bounds can outgrow the body limit
schema.config.checks.negative_data_rejection.expected_statuses.append("413")
# the OpenAI routes answer 400 to a schema-valid request the serving backend or model cannot take, which only the
# running server knows (the sim backend refuses penalties; logprobs past the model's max, a prompt over its context)
schema.config.checks.positive_data_acceptance.expected_statuses.append("400")


def test_the_served_spec_is_the_one_fuzzed(fuzz_server: Server) -> None:
    with fuzz_server.client() as c:
        assert c.get("/openapi.json").json() == app_spec()


@schema.exclude(path="/v1/events").exclude(path_regex=r"^/admin/engines/\{engine_id\}/(drain|restart)$").parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=not RANDOM)
def test_api_conforms_to_its_spec(case: schemathesis.Case, fuzz_server: Server) -> None:
    if case.path == "/v1/pipelines":
        fixed = respect_pipeline_rules(case.body)
    elif case.path == "/v1/jobs:batch":
        fixed = respect_min_tokens_each(case.body)
    else:
        fixed = respect_min_tokens(case.body)
    if fixed is not None:
        case.body = fixed  # (assigned, not changed in place: schemathesis then checks the body against the spec again)
    case.call_and_validate(base_url=fuzz_server.url, headers=fuzz_server.admin, timeout=30)


def respect_min_tokens(body: object) -> dict | None:
    """``min_tokens`` <= ``max_tokens`` is a rule between two fields, which JSON Schema cannot state (the spec
    says it in words): a generated body that breaks it is returned mended. Breaking it is a 422
    (tests/test_web_guards.py)."""
    def number(value: object) -> bool:  # 3 or 3.0: JSON has one number type
        return isinstance(value, int | float) and not isinstance(value, bool)

    if not isinstance(body, dict) or not number(body.get("min_tokens")):
        return None
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    limit = limit if number(limit) else FUZZ_SETTINGS_DEFAULT_MAX_TOKENS
    if body["min_tokens"] <= limit:
        return None
    return {**body, "min_tokens": max(0, int(limit))}


def respect_min_tokens_each(body: object) -> dict | None:
    """``respect_min_tokens`` for each job of a batch, and at most 50 jobs (the fuzz server's body limit, a 413,
    is not in the schema)."""
    if not isinstance(body, dict) or not isinstance(body.get("jobs"), list):
        return None
    jobs = [respect_min_tokens(job) or job for job in body["jobs"][:50]]
    return {**body, "jobs": jobs} if jobs != body["jobs"] else None


def respect_pipeline_rules(body: object) -> dict | None:
    """A pipeline's rules between steps (unique names, ``after`` naming steps that exist, no cycle, placeholders and
    map sources among a step's ``after``, affinity to one of them, ``fn`` naming a function the server registered)
    are not JSON Schema either (the spec says them in words): a generated body is returned with each step standing
    alone, a prompt step (the fuzz server registers no function). Breaking them is a 422
    (tests/test_pipelines.py, tests/test_pipelines_plan.py)."""
    if not isinstance(body, dict) or not isinstance(body.get("steps"), list):
        return None
    steps = []
    for i, step in enumerate(body["steps"]):
        if not isinstance(step, dict):
            return None
        alone = {k: v for k, v in step.items() if k not in ("after", "affinity", "pool", "map", "map_concurrency", "fn")}
        if isinstance(step.get("map"), list):
            alone["map"] = step["map"]
            if "map_concurrency" in step:
                alone["map_concurrency"] = step["map_concurrency"]
        alone["name"] = f"s{i}"
        if isinstance(alone.get("prompt"), str):
            alone["prompt"] = alone["prompt"].replace("{{", "{ {") or "x"
        steps.append(alone)
    return {**body, "steps": steps}
