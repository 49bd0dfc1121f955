"""Admin routes: engines with their state, current job, busy time, jobs done, RSS and GPU; kill a job;
interrupt, drain and restart an engine.

On a live server (``server``), except the answers about jobs and engines that do not exist (``web``, in-process).
"""

from __future__ import annotations

import httpx
import pytest

from support.inprocess import InProcessApp
from support.inprocess_server import Server
from support.live import job_status
from support.waiting import eventually

pytestmark = pytest.mark.timeout(120)


def engines(c: httpx.Client, s: Server) -> list[dict]:
    return c.get("/admin/engines", headers=s.admin).json()["engines"]


def engine_running(c: httpx.Client, s: Server, job_id: str) -> dict | None:
    return next((e for e in engines(c, s) if e["job_id"] == job_id), None)


@pytest.mark.parametrize("server", ["real"], indirect=True)  # engine processes: pids, RSS
def test_engine_list_shows_what_runs_where_and_for_how_long(server: Server) -> None:
    with server.client() as c:
        listed = engines(c, server)
        assert len(listed) == 2
        for e in listed:
            assert e["state"] in ("idle", "busy") and e["gpu"] == "" and e["rss_mb"] > 10 and e["pid"] > 0
            assert {"id", "host", "job_id", "jobs_done", "busy_s", "deadline_s", "uptime_s", "restarts"} <= set(e)
        job = c.post("/v1/jobs", json={"prompt": "[sim:hang]", "deadline_s": 40}).json()
        first = eventually(lambda: engine_running(c, server, job["id"]), what="job on an engine")
        assert first["state"] == "busy" and first["deadline_s"] == 40
        later = eventually(lambda: (e := engine_running(c, server, job["id"])) and e["busy_s"] > first["busy_s"] + 0.2
                         and e, what="busy time to grow")
        one = c.get(f"/admin/engines/{later['id']}", headers=server.admin).json()
        assert one["job_id"] == job["id"] and one["pid"] == later["pid"]
        killed = c.post(f"/admin/jobs/{job['id']}/kill", headers=server.admin)
        assert killed.status_code == 202
        done = eventually(lambda: (j := job_status(c, job["id"]))["status"] == "cancelled" and j, what="kill")
        assert "killed by admin" in done["error"]
        idle = eventually(lambda: (e := [x for x in engines(c, server) if x["id"] == later["id"]]) and
                        e[0]["state"] == "idle" and e[0], what="engine idle again")
        assert idle["jobs_done"] == later["jobs_done"] + 1 and idle["pid"] == later["pid"]  # same engine, no restart


@pytest.mark.parametrize("server", ["inprocess", "real"], indirect=True)  # one HTTP contract, both servers
def test_interrupt_engine_frees_it_for_the_next_job(server: Server) -> None:
    with server.client() as c:
        job = c.post("/v1/jobs", json={"prompt": "[sim:hang]", "deadline_s": 40}).json()
        eng = eventually(lambda: engine_running(c, server, job["id"]), what="running")
        resp = c.post(f"/admin/engines/{eng['id']}/interrupt", headers=server.admin).json()
        assert resp["jobs"] == [job["id"]] and resp["interrupted"] == [job["id"]]
        eventually(lambda: job_status(c, job["id"])["status"] == "cancelled", what="interrupted")


def test_drain_and_undrain(server: Server) -> None:
    with server.client() as c:
        eid = engines(c, server)[0]["id"]
        resp = c.post(f"/admin/engines/{eid}/drain", headers=server.admin).json()
        assert resp["state"] == "draining" and resp["draining"] is True
        try:
            jobs = [c.post("/v1/jobs", json={"prompt": f"d{i}", "max_tokens": 2}).json()["id"] for i in range(4)]
            for jid in jobs:
                eventually(lambda jid=jid: job_status(c, jid)["status"] == "succeeded", what="jobs elsewhere")
            assert all(job_status(c, jid)["engine"]["id"] != eid for jid in jobs)
        finally:
            back = c.post(f"/admin/engines/{eid}/drain", params={"undo": True}, headers=server.admin).json()
        assert back["state"] in ("idle", "busy") and back["draining"] is False


@pytest.mark.parametrize("server", ["inprocess", "real"], indirect=True)  # one HTTP contract, both servers
def test_restart_engine_replaces_it(server: Server) -> None:
    with server.client() as c:
        old = engines(c, server)[0]
        resp = c.post(f"/admin/engines/{old['id']}/restart", headers=server.admin)
        assert resp.status_code == 202 and resp.json()["restarting"] == old["id"]

        def replaced() -> list[dict] | None:
            now = engines(c, server)
            ready = [e for e in now if e["state"] in ("idle", "busy")]
            return now if len(ready) == 2 and old["id"] not in [e["id"] for e in now] else None

        now = eventually(replaced, 30, what="a replacement engine")
        assert old["pid"] not in [e["pid"] for e in now]
        job = c.post("/v1/jobs", json={"prompt": "after restart", "max_tokens": 2}).json()
        eventually(lambda: job_status(c, job["id"])["status"] == "succeeded", what="a job after the restart")


async def test_unknown_engines_and_jobs_are_404_and_a_queued_job_is_killed_at_once(web: InProcessApp) -> None:
    c, admin = web.http, web.admin
    assert (await c.get("/admin/engines", headers=admin)).json() == {"engines": [], "starting": []}
    for method, path in [("GET", "/admin/engines/999"), ("POST", "/admin/engines/999/interrupt"),
                         ("POST", "/admin/engines/999/drain"), ("POST", "/admin/engines/999/restart"),
                         ("POST", "/admin/jobs/job-none/kill")]:
        resp = await c.request(method, path, headers=admin)
        assert resp.status_code == 404 and resp.json()["error"], (method, path, resp.text)
    job = (await c.post("/v1/jobs", json={"prompt": "never runs"})).json()
    killed = await c.post(f"/admin/jobs/{job['id']}/kill", headers=admin)
    assert killed.status_code == 202 and killed.json()["status"] == "cancelled"
    assert "killed by admin" in killed.json()["error"]


def test_hosts_list_the_servers_own_host_with_its_engines(server: Server) -> None:
    with server.client() as c:
        with server.client(keyed=False) as bare:
            assert bare.get("/admin/hosts").status_code == 401
        hosts = c.get("/admin/hosts", headers=server.admin).json()["hosts"]
        assert len(hosts) == 1
        host = hosts[0]
        assert host["local"] and host["state"] == "up" and not host["agent"] and host["losses"] == 0
        assert sorted(host["engines"]) == sorted(e["id"] for e in engines(c, server))
        assert {e["host"] for e in host["engine_list"]} == {host["host"]}


def test_revoking_a_host_needs_the_admin_token_a_known_host_and_not_the_servers_own(server: Server) -> None:
    with server.client() as c:
        own = c.get("/admin/hosts", headers=server.admin).json()["hosts"][0]
        with server.client(keyed=False) as bare:
            assert bare.post(f"/admin/hosts/{own['host']}/revoke").status_code == 401
        missing = c.post("/admin/hosts/no-such-host/revoke", headers=server.admin)
        assert missing.status_code == 404 and "no host 'no-such-host'" in missing.json()["error"]
        for name in (own["host"], own["host_key"]):
            refused = c.post(f"/admin/hosts/{name}/revoke", headers=server.admin)
            assert refused.status_code == 409 and "server's own" in refused.json()["error"]
        assert c.get("/admin/hosts", headers=server.admin).json()["hosts"][0]["state"] == "up"
