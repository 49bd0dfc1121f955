"""A scripted llmsup server for ``httpx.MockTransport`` and a fake IPyParallel cluster: the client's unit tests
run against these, no server or engine started.

``FakeServer`` keeps jobs and engines in dicts and records every request (with its ``Authorization`` header).
A job ends after ``long_polls_to_end`` long-polls (``GET /v1/jobs/{id}?wait_s=``); one whose prompt contains
``forever`` never ends, and its long-polls last their ``wait_s`` as the real server's do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "expired"}


@dataclass(frozen=True)
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    params: dict[str, str]
    authorization: str | None


def job_json(job_id: str, prompt: str, status: str = "queued", output: str = "", tokens: int = 0) -> dict[str, Any]:
    return {"id": job_id, "status": status, "prompt": prompt, "output": output, "tokens": tokens, "attempts": 1,
            "error": None, "engine": None, "params": {"max_tokens": 3}, "deadline_s": 5.0, "started_at": None}


class FakeServer:
    def __init__(self, long_polls_to_end: int = 2, final: str = "succeeded") -> None:
        self.long_polls_to_end = long_polls_to_end
        self.final = final
        self.seen: list[Seen] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.long_polls: dict[str, int] = {}
        self.engines = {i: {"id": i, "state": "idle", "jobs": [], "pid": 1000 + i} for i in (0, 1)}
        self.transport = httpx.MockTransport(self.handle)

    def requests_to(self, predicate: Callable[[Seen], bool]) -> list[Seen]:
        return [s for s in self.seen if predicate(s)]

    def _end(self, job: dict[str, Any], status: str, error: str | None = None) -> dict[str, Any]:
        job.update(status=status, output="a b c ", tokens=3, error=error)
        return job

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.seen.append(Seen(method, path, dict(request.url.params), request.headers.get("authorization")))
        parts = path.strip("/").split("/")
        if path == "/readyz":
            return httpx.Response(200, json={"status": "ready"})
        if parts[:2] == ["v1", "jobs"]:
            return await self._jobs(request, parts[2:])
        if parts[0] == "admin":
            return self._admin(request, parts[1:])
        return httpx.Response(404, json={"error": "Not Found"})

    async def _jobs(self, request: httpx.Request, rest: list[str]) -> httpx.Response:
        if not rest and request.method == "POST":
            body = json.loads(request.content)
            if body.get("max_tokens") == 0:
                return httpx.Response(422, json={"error": "max_tokens: must be >= 1"})
            job = job_json(f"job-{len(self.jobs) + 1}", body["prompt"])
            self.jobs[job["id"]] = job
            return httpx.Response(202, json=job)
        if not rest:
            return httpx.Response(200, json={"jobs": list(self.jobs.values())[::-1], "count": len(self.jobs)})
        job = self.jobs.get(rest[0])
        if job is None:
            return httpx.Response(404, json={"error": f"no job {rest[0]}"})
        if rest[1:] == ["cancel"]:
            return httpx.Response(202, json=self._end(job, "cancelled"))
        if rest[1:] == ["events"]:
            return self._events(job)
        wait_s = float(request.url.params.get("wait_s", 0))
        if wait_s > 0 and job["status"] not in TERMINAL:
            await self._long_poll(job, wait_s)
        return httpx.Response(200, json=job)

    async def _long_poll(self, job: dict[str, Any], wait_s: float) -> None:
        if "forever" in job["prompt"]:
            await asyncio.sleep(wait_s)  # the real server answers after wait_s when the job goes on
            return
        self.long_polls[job["id"]] = self.long_polls.get(job["id"], 0) + 1
        if self.long_polls[job["id"]] >= self.long_polls_to_end:
            self._end(job, self.final)
        else:
            job.update(status="running", tokens=1, output="a ")

    def _events(self, job: dict[str, Any]) -> httpx.Response:
        start = dict(job, status="running", output="", tokens=0)
        end = self._end(job, self.final)
        events = [("job", start)] + [("token", {"job_id": job["id"], "seq": i, "text": t})
                                     for i, t in enumerate(["a ", "b ", "c "])] + [("end", end)]
        body = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
        return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})

    def _admin(self, request: httpx.Request, rest: list[str]) -> httpx.Response:
        if request.headers.get("authorization") != "Bearer adm":
            return httpx.Response(401, json={"error": "admin token required"})
        if rest == ["engines"]:
            return httpx.Response(200, json={"engines": list(self.engines.values()), "starting": []})
        if rest[:1] == ["jobs"] and rest[2:] == ["kill"]:
            job = self.jobs.get(rest[1])
            if job is None:
                return httpx.Response(404, json={"error": f"no job {rest[1]}"})
            return httpx.Response(202, json=self._end(job, "cancelled", "killed by admin"))
        engine = self.engines.get(int(rest[1])) if rest[:1] == ["engines"] and len(rest) == 3 else None
        if engine is None:
            return httpx.Response(404, json={"error": "no such engine"})
        if rest[2] == "drain":
            undo = request.url.params.get("undo") == "true"
            engine["state"] = "idle" if undo else "draining"
            return httpx.Response(200, json={"engine": engine["id"], "action": "undrain" if undo else "drain",
                                             "jobs": [], "state": engine["state"]})
        return httpx.Response(200, json={"engine": engine["id"], "action": rest[2], "jobs": []})


class FakeView:
    """A DirectView of one engine: ``apply_async`` runs the function at once, or never once ``hung`` (work sent
    earlier still running there)."""

    def __init__(self, engine_id: int) -> None:
        self.targets = engine_id
        self.hung = False

    def apply_async(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        reply: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if not self.hung:
            reply.set_result(fn(*args))
        return reply


class FakeCluster:
    """An ``ipyparallel.Client`` as ``borrow_engine`` uses it: ``ids``, ``rc[id]``."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def __getitem__(self, engine_id: int) -> FakeView:
        return FakeView(engine_id)
