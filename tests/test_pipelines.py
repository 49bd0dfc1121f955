"""Pipelines on a real server (``llmsup serve``, sim engines): steps are ordinary jobs, later prompts hold earlier
outputs, a map fans out and a later step merges it, a runaway step ends its pipeline, affinity keeps a step on the
engine of the step before, and a pipeline survives a supervisor SIGKILL with no step run twice."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.live import LiveServer, alive, sim_environment, start_llmsup, stop, tagged_processes
from support.waiting import eventually

pytestmark = pytest.mark.timeout(180)


def create(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    resp = http.post("/v1/pipelines", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()


def ended(http: httpx.Client, pipeline_id: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = http.get(f"/v1/pipelines/{pipeline_id}").json()
        return body if body["status"] not in ("queued", "running") else None

    return eventually(done, timeout, f"pipeline {pipeline_id} ended")


def job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    return http.get(f"/v1/jobs/{job_id}").json()


@pytest.mark.parametrize("server", ["inprocess", "real"], indirect=True)  # one HTTP contract, both servers
def test_three_steps_whose_later_prompts_hold_earlier_outputs(server: LiveServer) -> None:
    with server.client() as http:
        p = create(http, {"steps": [
            {"name": "a", "prompt": "alpha beta", "max_tokens": 2},
            {"name": "b", "prompt": "Summarize: {{a}}", "after": ["a"], "max_tokens": 4},
            {"name": "c", "prompt": "Both: {{a}} | {{b}}", "after": ["a", "b"], "max_tokens": 50},
        ], "deadline_s": 60})
        assert p["id"].startswith("pipe-") and [s["status"] for s in p["steps"]][1:] == ["waiting", "waiting"]
        done = ended(http, p["id"])
        assert done["status"] == "succeeded", done
        a, b, c = done["steps"]
        assert a["output"].split() == ["alpha", "beta"]
        jb = job(http, b["job_ids"][0])
        assert jb["prompt"] == f"Summarize: {a['output']}" and jb["pipeline"] == p["id"]
        assert job(http, c["job_ids"][0])["prompt"] == f"Both: {a['output']} | {b['output']}"
        listed = http.get("/v1/jobs", params={"limit": 50}).json()["jobs"]
        assert {j["id"] for j in listed if j.get("pipeline") == p["id"]} == {a["job_ids"][0], b["job_ids"][0],
                                                                            c["job_ids"][0]}


def test_a_map_over_20_items_and_its_reduce(server: LiveServer) -> None:
    items = [f"item{i}" for i in range(20)]
    with server.client() as http:
        p = create(http, {"steps": [
            {"name": "split", "prompt": json.dumps(items).replace(" ", ""), "max_tokens": 1},
            {"name": "m", "prompt": "{{item}} done", "after": ["split"], "map": "{{split}}", "map_concurrency": 5,
             "max_tokens": 2},
            {"name": "merge", "prompt": "All: {{m}}", "after": ["m"], "max_tokens": 1},
        ]})
        done = ended(http, p["id"])
        assert done["status"] == "succeeded", done
        m = done["steps"][1]
        assert m["items"] == 20 and len(m["job_ids"]) == 20
        assert [o.split() for o in m["outputs"]] == [[item, "done"] for item in items]  # item order kept
        merge_prompt = job(http, done["steps"][2]["job_ids"][0])["prompt"]
        assert merge_prompt == "All: " + json.dumps(m["outputs"])


def test_a_runaway_step_ends_its_pipeline_timed_out_and_nothing_is_left_running(server: LiveServer) -> None:
    with server.client() as http:
        p = create(http, {"steps": [
            {"name": "runaway", "prompt": "spin [sim:hang]", "deadline_s": 0.5},
            {"name": "slow", "prompt": "w [sim:slow=0.2]", "max_tokens": 500},
            {"name": "after", "prompt": "{{runaway}}", "after": ["runaway"]},
        ]})
        done = ended(http, p["id"], 30)
        assert done["status"] == "timed_out" and "runaway" in done["error"]
        assert [s["status"] for s in done["steps"]] == ["timed_out", "cancelled", "skipped"]
        for step in done["steps"][:2]:
            jid = step["job_ids"][0]
            eventually(lambda jid=jid: job(http, jid)["status"] not in ("queued", "running"), 20, "job ended")
        assert job(http, done["steps"][0]["job_ids"][0])["status"] == "timed_out"
        assert job(http, done["steps"][1]["job_ids"][0])["status"] == "cancelled"


def test_affinity_keeps_a_step_on_the_engine_of_the_step_before(server: LiveServer) -> None:
    with server.client() as http:
        for _ in range(3):  # whichever engine a lands on, b follows it
            p = create(http, {"steps": [
                {"name": "a", "prompt": "x y z", "max_tokens": 3},
                {"name": "b", "prompt": "{{a}}", "after": ["a"], "affinity": "a", "max_tokens": 3},
            ]})
            done = ended(http, p["id"])
            a, b = done["steps"]
            assert b["engine"]["id"] == a["engine"]["id"] and b["placement"] == "engine", done


def test_bad_pipelines_are_refused_with_the_reason(server: LiveServer) -> None:
    with server.client() as http:
        for body, words in [
            ({"steps": [{"name": "a", "prompt": "x", "after": ["b"]}]}, "unknown steps"),
            ({"steps": [{"name": "a", "prompt": "x", "pool": "huge"}]}, "unknown pool 'huge'"),
            ({"steps": [{"name": "a", "prompt": "{{b}}"}]}, "cannot see"),
            ({"steps": []}, "steps"),
        ]:
            resp = http.post("/v1/pipelines", json=body)
            assert resp.status_code == 422 and words in resp.text, resp.text
        assert http.get("/v1/pipelines/pipe-nope").status_code == 404


def test_idempotency_key_returns_the_same_pipeline_and_cancel_ends_it(server: LiveServer) -> None:
    body = {"steps": [{"name": "a", "prompt": "w [sim:slow=0.2]", "max_tokens": 500},
                      {"name": "b", "prompt": "{{a}}", "after": ["a"]}], "idempotency_key": "pipe-key-1"}
    with server.client() as http:
        first = create(http, body)
        again = http.post("/v1/pipelines", json=body)
        assert again.json()["id"] == first["id"] and again.headers["Idempotent-Replayed"] == "true"
        cancelled = http.post(f"/v1/pipelines/{first['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["steps"][1]["status"] == "skipped"
        jid = cancelled["steps"][0]["job_ids"][0]
        eventually(lambda: job(http, jid)["status"] == "cancelled", 20, "the running step's job cancelled")




@pytest.mark.real  # llmsup serve killed and started again on its run directory
def test_a_pipeline_survives_a_supervisor_sigkill_and_no_step_runs_twice(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = sim_environment(tmp_path, {"LLMSUP_MAX_ATTEMPTS": "3"})
    first = start_llmsup(run_dir, tmp_path, env, engines=1, log_name="first")
    old_tree = [p for p in tagged_processes(first.tag) if p.pid != first.proc.pid]
    second: LiveServer | None = None
    try:
        with first.client() as http:
            p = create(http, {"steps": [
                {"name": "a", "prompt": "one two", "max_tokens": 2},
                {"name": "b", "prompt": "{{a}} [sim:slow=0.02]", "after": ["a"], "max_tokens": 150},
                {"name": "c", "prompt": "end {{b}}", "after": ["b"], "max_tokens": 1},
            ]})

            def b_running() -> bool:
                steps = http.get(f"/v1/pipelines/{p['id']}").json()["steps"]
                return steps[1]["status"] == "running"

            eventually(b_running, 30, "step b running")
            a_job = http.get(f"/v1/pipelines/{p['id']}").json()["steps"][0]["job_ids"][0]
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
        second = start_llmsup(run_dir, tmp_path, env, engines=1, log_name="second")
        with second.client() as http:
            done = ended(http, p["id"], 90)
            assert done["status"] == "succeeded", done
            a, b, c = done["steps"]
            assert a["job_ids"] == [a_job] and job(http, a_job)["attempts"] == 1  # done before: not run again
            assert len(b["job_ids"]) == 1 and job(http, b["job_ids"][0])["attempts"] == 2  # running: run once more
            assert len(c["job_ids"]) == 1
            pipeline_jobs = [j for j in http.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
                             if j.get("pipeline") == p["id"]]
            assert len(pipeline_jobs) == 3
    finally:
        for proc in alive(old_tree):
            proc.kill()
        stop(first)
        if second is not None:
            stop(second)
