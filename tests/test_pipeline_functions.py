"""Function steps on a real server: ``llmsup serve`` with a pool of ``backend=python`` engines that run the
functions registered at start (``--function NAME=module:callable``, from ``tests/pipeline_functions.py``) beside two
sim pools. A fetch -> split -> map (small) -> merge (big) pipeline, each step in its pool; a runaway function
interrupted at its step's deadline with its pipeline ``timed_out`` and the rest skipped; a function's error; steps
refused when placed on the wrong kind of pool; a server whose pool of functions cannot start gives up, naming it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmsup.supervisor.core.start_failures import pool_give_up
from support.live import LiveServer, ServerExited, finish_server, sim_environment, start_llmsup
from support.waiting import eventually

pytestmark = pytest.mark.timeout(180)
TESTS = Path(__file__).resolve().parent
FUNCTIONS = [arg for name in ("fetch", "split", "count", "spin", "fail")
             for arg in ("--function", f"{name}=pipeline_functions:{name}")]
POOLS = ["--pool", "name=io,backend=python,engines=1",
         "--pool", "name=small,backend=sim,engines=1,served_model_name=m-small",
         "--pool", "name=big,backend=sim,engines=1,served_model_name=m-big"]


def function_environment(base: Path) -> dict[str, str]:
    """The sim test settings, and ``tests/`` on the path so that engines import ``pipeline_functions``."""
    env = sim_environment(base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH", "")]))
    return env


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    base: Path = tmp_path_factory.mktemp("functions")
    server = start_llmsup(base / "run", base, function_environment(base), engines=3, args=[*POOLS, *FUNCTIONS],
                          cwd=base)
    try:
        yield server
    finally:
        finish_server(server)


def create(http: httpx.Client, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    resp = http.post("/v1/pipelines", json={"steps": steps, **extra})
    assert resp.status_code == 202, resp.text
    return resp.json()


def ended(http: httpx.Client, pipeline_id: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = http.get(f"/v1/pipelines/{pipeline_id}").json()
        return body if body["status"] not in ("queued", "running") else None

    return eventually(done, timeout, f"pipeline {pipeline_id} ended")


def job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
    return body


def engine_pools(http: httpx.Client, server: LiveServer) -> dict[int, str]:
    return {e["id"]: e["pool"] for e in http.get("/admin/engines", headers=server.admin).json()["engines"]}


def test_fetch_split_map_on_a_small_model_merge_on_a_big_one(served: LiveServer, tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("Engines hold models. Jobs have deadlines. Steps are jobs.")
    with served.client() as http:
        p = create(http, [
            {"name": "fetch", "fn": "fetch", "prompt": str(doc), "deadline_s": 10},
            {"name": "split", "fn": "split", "prompt": "{{fetch}}", "after": ["fetch"], "deadline_s": 10},
            {"name": "stats", "fn": "count", "prompt": "{{split}}", "after": ["split"]},
            {"name": "sum", "prompt": "Summarize: {{item}}", "after": ["split"], "map": "{{split}}",
             "pool": "small", "map_concurrency": 2, "max_tokens": 3},
            {"name": "merge", "prompt": "Merge {{sum}}", "after": ["sum"], "pool": "m-big", "max_tokens": 2},
        ], deadline_s=60)
        done = ended(http, p["id"])
        assert done["status"] == "succeeded", done
        fetch, split, stats, mapped, merge = done["steps"]
        assert fetch["output"] == doc.read_text()
        assert json.loads(split["output"]) == ["Engines hold models", "Jobs have deadlines", "Steps are jobs"]
        assert json.loads(stats["output"]) == {"items": 3, "words": 9}  # a function's JSON value, as JSON text
        assert mapped["items"] == 3 and [o.split()[1] for o in mapped["outputs"]] == ["Engines", "Jobs", "Steps"]
        assert job(http, merge["job_ids"][0])["prompt"] == "Merge " + mapped["output"]
        pools = engine_pools(http, served)
        for step, pool in ((fetch, "io"), (split, "io"), (stats, "io"), (mapped, "small"), (merge, "big")):
            for job_id in step["job_ids"]:
                ran = job(http, job_id)
                assert ran["pool"] == pool and pools[ran["engine"]["id"]] == pool, (step["name"], ran)


def test_a_runaway_function_is_interrupted_and_its_pipeline_times_out(served: LiveServer) -> None:
    with served.client() as http:
        p = create(http, [
            {"name": "spin", "fn": "spin", "prompt": "x", "deadline_s": 1},
            {"name": "slow", "prompt": "w [sim:slow=0.2]", "pool": "small", "max_tokens": 500},
            {"name": "after", "prompt": "{{spin}}", "after": ["spin"], "pool": "big"},
            {"name": "io_after", "fn": "count", "prompt": "{{spin}}", "after": ["spin"]},
        ], deadline_s=60)
        done = ended(http, p["id"], 30)
        assert done["status"] == "timed_out" and "spin" in done["error"], done
        assert [s["status"] for s in done["steps"]] == ["timed_out", "cancelled", "skipped", "skipped"]
        spin_job, slow_job = done["steps"][0]["job_ids"][0], done["steps"][1]["job_ids"][0]
        eventually(lambda: job(http, slow_job)["status"] == "cancelled", 20, "the running step's job cancelled")
        ran = job(http, spin_job)
        assert ran["status"] == "timed_out" and "interrupted" in ran["error"], ran
        jobs = http.get("/v1/jobs", params={"limit": 200}).json()["jobs"]
        assert not [j for j in jobs if j["status"] in ("queued", "running")]
        # the interrupt ended the call, not the engine: the same engine runs the next function
        again = ended(http, create(http, [{"name": "c", "fn": "count", "prompt": "[1, 2]"}])["id"])
        assert again["status"] == "succeeded" and json.loads(again["steps"][0]["output"])["items"] == 2
        assert again["steps"][0]["engine"]["id"] == ran["engine"]["id"]


def test_a_function_that_raises_fails_its_step_saying_why(served: LiveServer) -> None:
    with served.client() as http:
        done = ended(http, create(http, [{"name": "f", "fn": "fail", "prompt": "x"},
                                         {"name": "g", "prompt": "{{f}}", "after": ["f"]}])["id"])
        assert done["status"] == "failed" and [s["status"] for s in done["steps"]] == ["failed", "skipped"]
        assert "this function always fails" in done["steps"][0]["error"], done


def test_steps_on_the_wrong_kind_of_pool_are_refused(served: LiveServer) -> None:
    with served.client() as http:
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["m-small", "m-big"]  # io runs no model
        assert "pools      io: functions (backend python, 1 engines); small: m-small (backend sim" \
            in served.log_tail(20_000)  # the ready banner
        for step, words in [
            ({"name": "a", "fn": "nope", "prompt": "x"}, "no function 'nope'"),
            ({"name": "a", "fn": "fetch", "prompt": "x", "pool": "small"}, "pool 'small' runs a model"),
            ({"name": "a", "prompt": "x", "pool": "io"}, "pool 'io' runs functions"),
        ]:
            resp = http.post("/v1/pipelines", json={"steps": [step]})
            assert resp.status_code == 422 and words in resp.text, resp.text
        plain = http.post("/v1/jobs", json={"prompt": "a b", "max_tokens": 2})  # no pool: the first model's
        assert plain.status_code == 202 and plain.json()["pool"] == "small", plain.text


def test_a_pool_that_cannot_start_ends_the_start_naming_it(tmp_path: Path) -> None:
    args = ["--pool", "name=io,backend=python,engines=1", "--pool", "name=small,backend=sim,engines=1",
            "--function", "gone=pipeline_functions:no_such_function"]
    with pytest.raises(ServerExited) as exited:  # start_llmsup stops whatever the server left
        start_llmsup(tmp_path / "run", tmp_path, function_environment(tmp_path), engines=2, args=args, cwd=tmp_path,
                     timeout=90)
    assert "pool io:" in str(exited.value) and "gone=pipeline_functions:no_such_function" in str(exited.value), \
        str(exited.value)


def test_one_pool_giving_up_is_enough_whatever_the_others_do() -> None:
    expected = {"io": 1, "small": 2}
    assert pool_give_up({"io": ["init: RuntimeError: no fn"]}, expected, {"small": 2}) == "pool io: RuntimeError: no fn"
    assert pool_give_up({"small": ["init: OSError: x"]}, expected, {"io": 1}) is None  # one of two tried: waits
    assert pool_give_up({"small": ["init: OSError: x"] * 2}, expected, {"io": 1}) == "pool small: OSError: x"
    assert pool_give_up({"small": ["init: OSError: x"] * 2}, expected, {"small": 1}) is None  # one of them serves
