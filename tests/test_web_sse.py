"""Server-Sent Events: one job's events in order, the global feed, and streams that end with their client.

Streams need a live server (``server``); the answers that come before any stream run in-process (``web``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from support.inprocess import InProcessApp
from support.inprocess_server import Server
from support.live import job_status
from support.waiting import eventually

pytestmark = pytest.mark.timeout(120)


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    """(event name, JSON data) for each SSE message; comment lines are skipped."""
    name, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def open_streams(c: httpx.Client) -> float:
    text = c.get("/metrics").text
    return float(re.search(r"^llmsup_sse_streams (\S+)$", text, re.M).group(1))


@pytest.mark.parametrize("server", ["inprocess", "real"], indirect=True)  # one HTTP contract, both servers
def test_job_events_in_order_from_queued_to_succeeded(server: Server) -> None:
    with server.client() as c:
        # drained engines hold the job in the queue, so the stream sees every status change
        for e in c.get("/admin/engines", headers=server.admin).json()["engines"]:
            c.post(f"/admin/engines/{e['id']}/drain", headers=server.admin).raise_for_status()
        try:
            job = c.post("/v1/jobs", json={"prompt": "one two three [sim:slow=0.01]", "max_tokens": 15}).json()
            events = []
            with c.stream("GET", f"/v1/jobs/{job['id']}/events") as resp:
                assert resp.headers["content-type"].startswith("text/event-stream")
                stream = sse_events(resp.iter_lines())
                events.append(next(stream))
                assert events[0][0] == "job" and events[0][1]["status"] == "queued"
                for e in c.get("/admin/engines", headers=server.admin).json()["engines"]:
                    c.post(f"/admin/engines/{e['id']}/drain", params={"undo": True}, headers=server.admin)
                events.extend(stream)
        finally:
            for e in c.get("/admin/engines", headers=server.admin).json()["engines"]:
                c.post(f"/admin/engines/{e['id']}/drain", params={"undo": True}, headers=server.admin)
    names = [n for n, _ in events]
    statuses = [d["status"] for n, d in events if n == "status"]
    assert statuses == ["running", "succeeded"]
    assert names[-1] == "end" and names[-2] == "status"
    tokens = [d for n, d in events if n == "token"]
    assert names.index("status") < names.index("token")  # running is announced before the first token
    assert [t["seq"] for t in tokens] == list(range(len(tokens)))  # in order, none missing
    final = events[-1][1]
    assert final["status"] == "succeeded" and final["tokens"] == 15
    assert final["output"].startswith("".join(t["text"] for t in tokens))  # the result may beat the last tokens
    assert len(tokens) >= 10


def test_events_of_a_finished_job(server: Server) -> None:
    with server.client() as c:
        job = c.post("/v1/jobs", json={"prompt": "quick", "max_tokens": 2}).json()
        eventually(lambda: job_status(c, job["id"])["status"] == "succeeded", what="job done")
        with c.stream("GET", f"/v1/jobs/{job['id']}/events") as resp:
            events = list(sse_events(resp.iter_lines()))
        assert [n for n, _ in events] == ["job", "end"]
        assert events[-1][1]["output"] == "quick quick "


async def test_events_of_an_unknown_job_are_a_404_before_any_stream(web: InProcessApp) -> None:
    missing = await web.http.get("/v1/jobs/job-nope/events")
    assert missing.status_code == 404 and "job-nope" in missing.json()["error"]
    assert missing.headers["content-type"].startswith("application/json")


def test_a_stream_ends_with_its_client_and_leaves_the_job_alone(server: Server) -> None:
    with server.client() as c:
        base = open_streams(c)
        job = c.post("/v1/jobs", json={"prompt": "silent [sim:hang]", "max_tokens": 50, "deadline_s": 30}).json()
        with server.client() as viewer:
            with viewer.stream("GET", f"/v1/jobs/{job['id']}/events") as resp:
                lines = resp.iter_lines()  # (dropping a half-read iterator closes the connection)
                next(lines)
                eventually(lambda: open_streams(c) == base + 1, 10, what="stream counted")
        # the job produces nothing now: only the server noticing the disconnect can end the stream
        eventually(lambda: open_streams(c) == base, 5, what="stream gone with its client")
        assert job_status(c, job["id"])["status"] == "running"  # a plain viewer does not cancel
        c.post(f"/admin/jobs/{job['id']}/kill", headers=server.admin).raise_for_status()
        eventually(lambda: job_status(c, job["id"])["status"] == "cancelled", what="killed")


def test_cancel_on_disconnect_option(server: Server) -> None:
    with server.client() as c:
        job = c.post("/v1/jobs", json={"prompt": "[sim:hang]", "max_tokens": 50, "deadline_s": 30}).json()
        with c.stream("GET", f"/v1/jobs/{job['id']}/events", params={"cancel_on_disconnect": True}) as resp:
            next(resp.iter_lines())
        done = eventually(lambda: (j := job_status(c, job["id"]))["status"] == "cancelled" and j, 10, what="cancel")
        assert "event stream was closed" in done["error"]


@pytest.mark.parametrize("server", ["inprocess", "real"], indirect=True)  # one HTTP contract, both servers
def test_global_feed(server: Server) -> None:
    with server.client() as c:
        with c.stream("GET", "/v1/events", params={"engines_every_s": 0.2}, headers=server.admin) as resp:
            stream = sse_events(resp.iter_lines())
            name, snap = next(stream)
            assert name == "snapshot" and isinstance(snap["jobs"], list)
            assert len(snap["engines"]) == 2 and {"state", "job_id", "jobs_done", "busy_s"} <= set(snap["engines"][0])
            job = c.post("/v1/jobs", json={"prompt": "feed me [sim:slow=0.01]", "max_tokens": 30}).json()
            seen, engines_events = [], 0
            for name, data in stream:
                if name == "engines":
                    engines_events += 1
                elif name == "job" and data["id"] == job["id"]:
                    seen.append(data)
                    if data["status"] == "succeeded":
                        break
    statuses = [d["status"] for d in seen]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded" and "running" in statuses
    assert seen[-1]["output_tail"].startswith("feed me")
    assert engines_events >= 1


def test_long_poll_answers_when_the_job_ends(server: Server) -> None:
    with server.client() as c:
        job = c.post("/v1/jobs", json={"prompt": "slowish [sim:slow=0.02]", "max_tokens": 20}).json()
        done = c.get(f"/v1/jobs/{job['id']}", params={"wait_s": 20}).json()
        assert done["status"] == "succeeded" and done["tokens"] == 20
        hang = c.post("/v1/jobs", json={"prompt": "[sim:hang]", "deadline_s": 30}).json()
        still = c.get(f"/v1/jobs/{hang['id']}", params={"wait_s": 0.3}).json()
        assert still["status"] in ("queued", "running")  # answered at wait_s
        c.post(f"/admin/jobs/{hang['id']}/kill", headers=server.admin)
        assert c.get(f"/v1/jobs/{hang['id']}", params={"wait_s": 20}).json()["status"] == "cancelled"


async def test_long_poll_bounds(web: InProcessApp) -> None:
    job = (await web.http.post("/v1/jobs", json={"prompt": "stays queued"})).json()
    assert (await web.http.get(f"/v1/jobs/{job['id']}", params={"wait_s": 61})).status_code == 422
    assert (await web.http.get(f"/v1/jobs/{job['id']}", params={"wait_s": -1})).status_code == 422
    still = await web.http.get(f"/v1/jobs/{job['id']}", params={"wait_s": 0.05})  # answered at wait_s
    assert still.status_code == 200 and still.json()["status"] == "queued"
