"""The checks of ``bench/gpu_check.py`` that run against one real ``llmsup serve`` (transformers backend).

One server with a warm standby: placement (which GPU each engine got, from the server and from ``nvidia-smi``),
deadlines (runaways interrupted; deadline -> next job start), standby promotion (a busy engine killed -> the
waiting job starts on the standby) and stop (SIGTERM: no process left, the GPU memory given back).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from llmsup.engines.placement import visible_gpus
from tests.support import live

ROOT = Path(__file__).resolve().parent.parent
PASS, FAIL, SKIP = "pass", "fail", "skipped"
LONG = 100_000  # max_tokens of a job with no end of its own (the server's max_tokens_limit; the context ends it)


@dataclass
class Check:
    """One line of the table: what was checked, its outcome, the figure measured, and why."""

    name: str
    status: str
    figure: str = ""
    detail: str = ""
    extra: str = ""  # a table of its own, for the markdown file

    @classmethod
    def failed(cls, name: str, error: BaseException) -> Check:
        said = str(error).splitlines()[0] if str(error) else ""
        if isinstance(error, httpx.HTTPStatusError):
            said = f"{error.request.method} {error.request.url.path}: {error.response.status_code} {error.response.text}"
        return cls(name, FAIL, "", f"{type(error).__name__}: {' '.join(said.split())[:300]}")


@dataclass(frozen=True)
class Gpu:
    index: str
    uuid: str
    used_mib: float


def nvidia_smi(query: str, kind: str = "gpu") -> list[list[str]]:
    """Rows of ``nvidia-smi --query-<kind>=<query>`` (none where there is no nvidia-smi)."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-{kind}={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def gpus() -> list[Gpu]:
    return [Gpu(r[0], r[1], float(r[2])) for r in nvidia_smi("index,uuid,memory.used") if len(r) == 3]


def gpu_apps() -> dict[int, tuple[str, float]]:
    """pid -> (GPU uuid, MiB) of the processes nvidia-smi sees on a GPU (pids of this pid namespace or not)."""
    apps = {}
    for r in nvidia_smi("pid,gpu_uuid,used_memory", "compute-apps"):
        if len(r) == 3 and r[0].isdigit():
            apps[int(r[0])] = (r[1], float(r[2]) if r[2].replace(".", "").isdigit() else 0.0)
    return apps


def same_gpu(name: str, gpu: Gpu) -> bool:
    """``name`` as CUDA_VISIBLE_DEVICES gives it (an index or a UUID) names ``gpu``."""
    return name == gpu.index or name == gpu.uuid or (name.startswith(("GPU-", "MIG-")) and gpu.uuid.startswith(name))


def ts(value: str | None) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else float("nan")


@dataclass
class Serve:
    """The server these checks share, and its HTTP client."""

    server: live.LiveServer
    http: httpx.Client
    serving: int
    gpu_before: list[Gpu] = field(default_factory=list)

    def engines(self) -> list[dict[str, Any]]:
        resp = self.http.get("/admin/engines", headers=self.server.admin)
        resp.raise_for_status()
        engines: list[dict[str, Any]] = resp.json()["engines"]
        return engines

    def submit(self, prompt: str, max_tokens: int, deadline_s: float | None = None) -> str:
        body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
        if deadline_s:
            body["deadline_s"] = deadline_s
        resp = self.http.post("/v1/jobs", json=body)
        resp.raise_for_status()
        job_id: str = resp.json()["id"]
        return job_id

    def job(self, job_id: str, wait_s: float = 0) -> dict[str, Any]:
        resp = self.http.get(f"/v1/jobs/{job_id}", params={"wait_s": wait_s} if wait_s else None,
                             timeout=wait_s + 30)
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body

    def done(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            job = self.job(job_id, wait_s=min(60.0, max(1.0, end - time.monotonic())))
            if job["finished_at"] or time.monotonic() > end:
                return job

    def until(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                raise TimeoutError(f"waited {timeout:.0f}s for {what}")
            time.sleep(0.05)

    def standby_ready(self, timeout: float) -> None:
        self.until("a warm standby engine", lambda: any(e["state"] == "standby" for e in self.engines()), timeout)


def start(model: str, work: Path, engines: int, start_timeout: float) -> Serve:
    """``llmsup serve --backend transformers --standby 1`` on ``model``, as a user starts it (production settings)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LLMSUP_URL", "LLMSUP_RUN_DIR", "LLMSUP_ADMIN_TOKEN")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               IPYTHONDIR=str(work / "ipython-home"), LLMSUP_ENGINE_START_TIMEOUT_S=str(int(start_timeout)))
    before = gpus()
    server = live.start_llmsup(work / "run", work, env, engines=engines, backend="transformers",
                               args=["--model", model, "--standby", "1", "--log-level", "warning"], cwd=ROOT,
                               timeout=start_timeout, log_name="llmsup-serve")
    serve = Serve(server, server.client(timeout=120), engines, before)
    try:
        serve.standby_ready(start_timeout)
    except BaseException:
        stop(serve)
        raise
    return serve


def placement(serve: Serve, gpu_mode: bool) -> Check:
    """Each engine's GPU: as llmsup placed it, within the visible set, and where nvidia-smi sees its process."""
    engines = serve.engines()
    if not gpu_mode:
        return Check("placement", SKIP, "", f"no GPU visible: engines on the CPU ({engine_list(engines)})")
    return judge_placement(engines, visible_gpus(), gpus(), gpu_apps())


def engine_list(engines: list[dict[str, Any]]) -> str:
    return "; ".join(f"engine {e['id']} ({e['state']}) pid {e['pid']} gpu {e['gpu'] or 'cpu'}"
                     + (f" {e['gpu_mem_mb']:.0f} MB" if e.get("gpu_mem_mb") else "") for e in engines)


def judge_placement(engines: list[dict[str, Any]], visible: list[str], devices: list[Gpu],
                    apps: dict[int, tuple[str, float]]) -> Check:
    """Every engine on visible GPUs only, serving engines on distinct GPUs while there are enough, and each engine's
    process on its GPU where nvidia-smi lists the pid (not in another pid namespace)."""
    problems, seen = [], []
    for e in engines:
        names = [n for n in str(e["gpu"]).split(",") if n]
        if not names or any(n not in visible for n in names):
            problems.append(f"engine {e['id']} on {e['gpu']!r}, not within the visible {visible}")
        app = apps.get(int(e["pid"]))
        if app is not None:
            on = [g for g in devices if g.uuid == app[0]]
            seen.append(f"pid {e['pid']} on GPU {','.join(g.index for g in on)}")
            if names and not any(same_gpu(n, g) for n in names for g in on):
                problems.append(f"engine {e['id']} placed on {e['gpu']} but nvidia-smi has its pid on GPU "
                                f"{','.join(g.index for g in on)}")
    serving = [e["gpu"] for e in engines if e["state"] != "standby"]
    if len(serving) <= len(visible) and len(set(serving)) < len(serving):
        problems.append(f"serving engines share a GPU while others are free: {serving}")
    detail = engine_list(engines) + (f"; nvidia-smi: {', '.join(seen)}" if seen else "; nvidia-smi lists no engine "
                                     "pid (another pid namespace?)")
    figure = ", ".join(f"e{e['id']}->{e['gpu']}" for e in engines)
    return Check("placement", FAIL if problems else PASS, figure, "; ".join(problems) or detail)


def deadlines(serve: Serve, rounds: int, deadline_s: float) -> Check:
    """Runaways on every serving engine (no end of their own), each with a deadline; as many short jobs wait.
    Deadline -> next job start = each waiting job's start - the runaways' deadlines, in order."""
    lags, statuses = [], []
    for r in range(rounds):
        runaways = [serve.submit(f"Runaway {r}.{i}: tell the story forever", LONG, deadline_s)
                    for i in range(serve.serving)]
        nexts = [serve.submit(f"Next {r}.{i}", 1) for i in range(serve.serving)]
        ran = [serve.done(j) for j in runaways]
        nxt = [serve.done(j) for j in nexts]
        statuses += [j["status"] for j in ran]
        due = sorted(ts(j["started_at"]) + deadline_s for j in ran)
        lags += [s - d for s, d in zip(sorted(ts(j["started_at"]) for j in nxt), due)]
    bad = [s for s in statuses if s != "timed_out"]
    ms = [v * 1000 for v in lags]
    figure = f"next job {statistics.median(ms):.0f} ms after the deadline (max {max(ms):.0f}, n={len(ms)})"
    detail = f"deadline {deadline_s}s, {rounds} rounds x {serve.serving} runaways; statuses {sorted(set(statuses))}"
    return Check("deadlines", FAIL if bad or max(ms) > 5000 else PASS, figure, detail)


def standby(serve: Serve) -> Check:
    """A busy engine killed (``/admin/engines/{id}/restart``) while a job waits: the standby takes it."""
    serve.standby_ready(300)
    long = [serve.submit(f"Busy {i}: a long story", LONG) for i in range(serve.serving)]
    serve.until("the long jobs to make tokens", lambda: all(serve.job(j)["tokens"] > 0 for j in long), 300)
    waiting = serve.submit("Waiting for an engine", 1)
    victim = serve.job(long[0])["engine"]["id"]
    t_kill = time.time()
    serve.http.post(f"/admin/engines/{victim}/restart", headers=serve.server.admin).raise_for_status()
    nxt = serve.done(waiting, 120)
    for j in long:  # the killed engine's job is retried (on an engine of its own); none is needed any more
        serve.http.post(f"/v1/jobs/{j}/cancel")
    killed = serve.done(long[0], 60)
    for j in long[1:]:
        serve.done(j, 60)
    lag = ts(nxt["started_at"]) - t_kill
    ok = nxt["status"] == "succeeded" and nxt["engine"] and nxt["engine"]["id"] != victim
    detail = (f"engine {victim} killed while busy (its job then {killed['status']}, attempts: {killed['attempts']}); "
              f"the waiting job ran on engine {(nxt['engine'] or {}).get('id')} ({nxt['status']})")
    return Check("standby promotion", PASS if ok else FAIL, f"{lag * 1000:.0f} ms kill -> next job start", detail)


def stop(serve: Serve, gpu_mode: bool = False) -> Check:
    """SIGTERM to ``llmsup serve``: every process it started gone, the GPUs' memory back to what it was."""
    serve.http.close()
    t0 = time.monotonic()
    survivors = live.stop(serve.server)
    took = time.monotonic() - t0
    problems = [f"left after SIGTERM (killed now): {survivors}"] if survivors else []
    figure = f"stopped in {took:.1f} s"
    if gpu_mode and serve.gpu_before:
        before = {g.uuid: g.used_mib for g in serve.gpu_before}
        end, after = time.monotonic() + 15, gpus()
        while any(g.used_mib > before.get(g.uuid, 0) + 64 for g in after) and time.monotonic() < end:
            time.sleep(0.2)
            after = gpus()
        held = [f"GPU {g.index}: {before.get(g.uuid, 0):.0f} -> {g.used_mib:.0f} MiB" for g in after
                if g.used_mib > before.get(g.uuid, 0) + 64]
        problems += [f"GPU memory not given back: {'; '.join(held)}"] if held else []
        figure += "; GPU MiB used before start -> after stop: " + ", ".join(
            f"{g.index}: {before.get(g.uuid, 0):.0f} -> {g.used_mib:.0f}" for g in after)
    return Check("stop frees the GPU" if gpu_mode else "stop (no process left)", FAIL if problems else PASS, figure,
                 "; ".join(problems) or "no process left")


def run_all(model: str, work: Path, gpu_mode: bool, engines: int, rounds: int, deadline_s: float,
            start_timeout: float, wanted: frozenset[str] = frozenset({"placement", "deadlines", "standby"})) -> list[Check]:
    """The checks on one server (``wanted`` of placement, deadlines, standby; stop always); a check that raises
    fails, the others still run; the server always stops."""
    try:
        serve = start(model, work, engines, start_timeout)
    except Exception as e:  # noqa: BLE001 (reported as the checks' failure; cancellation is BaseException)
        return [Check.failed(name, e) for name in ("placement", "deadlines", "standby promotion", "stop")]
    checks: list[Check] = []
    try:
        for key, name, fn in (("placement", "placement", lambda: placement(serve, gpu_mode)),
                              ("deadlines", "deadlines", lambda: deadlines(serve, rounds, deadline_s)),
                              ("standby", "standby promotion", lambda: standby(serve))):
            if key not in wanted:
                continue
            try:
                checks.append(fn())
            except Exception as e:  # noqa: BLE001 (one check's failure; the next still runs)
                checks.append(Check.failed(name, e))
    finally:
        checks.append(stop(serve, gpu_mode))
    return checks
