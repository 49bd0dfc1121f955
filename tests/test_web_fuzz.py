"""Schemathesis against the app's own OpenAPI spec, on a real server: no 5xx, responses match the spec.

Bounded: a few examples per operation (``LLMSUP_FUZZ_EXAMPLES``, default 12), so the whole run takes well
under two minutes. Left out: the never-ending global feed (``/v1/events``) and the engine drain / restart
routes (they would take the fuzzed cluster's engines away; ``test_web_admin`` covers them).
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from webfixtures import Server, serve

pytestmark = pytest.mark.timeout(240)
EXAMPLES = int(os.environ.get("LLMSUP_FUZZ_EXAMPLES", "12"))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory, "fuzz", sim_token_s=0.0005, max_tokens_limit=16, deadline_s=5,
                     max_deadline_s=10, queue_timeout_s=10, max_prompt_chars=2000, max_body_bytes=65536)


@pytest.fixture
def api_schema(fuzz_server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.exclude(path="/v1/events").exclude(path_regex=r"^/admin/engines/\{engine_id\}/(drain|restart)$").parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_spec(case: schemathesis.Case, fuzz_server: Server) -> None:
    case.call_and_validate(headers=fuzz_server.admin, timeout=30)
