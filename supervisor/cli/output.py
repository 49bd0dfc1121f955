"""What ``llmsup status``, ``engines``, ``submit`` and ``kill`` print for people (``--json`` prints the API's JSON).

Everything here takes the JSON the server answers and renders it with rich; nothing talks to the server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

STATUS_STYLE = {"succeeded": "green", "running": "cyan", "queued": "yellow", "failed": "red", "timed_out": "red",
                "cancelled": "magenta", "expired": "magenta"}
STATE_STYLE = {"idle": "green", "busy": "cyan", "standby": "blue", "starting": "yellow", "draining": "yellow",
               "interrupting": "magenta", "restarting": "red", "dead": "red"}
PROMPT_CHARS = 40


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _seconds(start: str | None, end: str | None) -> float | None:
    began, ended = _when(start), _when(end)
    if began is None:
        return None
    return ((ended or datetime.now(UTC)) - began).total_seconds()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def engine_ref(engine: dict[str, Any] | None) -> str:
    """``engine 1 (host pid 1234, GPU 0)`` for a job's ``engine`` field."""
    if not engine:
        return "-"
    return f"engine {engine['id']} ({engine.get('host', '?')} pid {engine.get('pid', '?')}, {_gpu(engine.get('gpu'))})"


def _gpu(gpu: str | None) -> str:
    return f"GPU {gpu}" if gpu else "CPU"


def job_summary(job: dict[str, Any]) -> str:
    """One line: id, status, tokens, time and where it ran (and why it ended, unless it succeeded)."""
    ran = _seconds(job.get("started_at"), job.get("finished_at"))
    parts = [job["id"], job["status"]] + ([f"{job.get('tokens', 0)} tokens"] if job["status"] != "queued" else [])
    if ran is not None:
        parts.append(f"in {_duration(ran)}")
    if job.get("engine"):
        parts.append(f"on {engine_ref(job['engine'])}")
    if job.get("attempts", 1) > 1:
        parts.append(f"attempt {job['attempts']}")
    line = ", ".join(parts)
    if job.get("error") and job["status"] != "succeeded":
        line += f": {job['error']}"
    return line


def print_job(console: Console, job: dict[str, Any]) -> None:
    """One job: its fields, then its output."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("job", job["id"])
    table.add_row("status", _status(job["status"]))
    table.add_row("tokens", f"{job.get('tokens', 0)} (prompt {job.get('prompt_tokens', 0)})")
    table.add_row("attempts", str(job.get("attempts", 0)))
    table.add_row("engine", engine_ref(job.get("engine")))
    table.add_row("deadline", f"{job['deadline_s']}s" if job.get("deadline_s") is not None else "none")
    table.add_row("queued", _duration(_seconds(job.get("created_at"), job.get("started_at"))))
    table.add_row("ran", _duration(_seconds(job.get("started_at"), job.get("finished_at"))))
    if job.get("finish_reason"):
        table.add_row("finish", job["finish_reason"])
    if job.get("error"):
        table.add_row("error", Text(job["error"], style="red"))
    table.add_row("prompt", Text(job.get("prompt", "")))
    console.print(table)
    console.print(Text("output:", style="bold"))
    console.print(Text(job.get("output", "")), soft_wrap=True)


def print_jobs(console: Console, jobs: list[dict[str, Any]]) -> None:
    if not jobs:
        console.print("no jobs")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("JOB", "STATUS", "TOKENS", "TRIES", "ENGINE", "RAN", "CREATED", "PROMPT"):
        table.add_column(column, no_wrap=True, overflow="ellipsis", justify="right" if column in ("TOKENS", "TRIES") else "left")
    for job in jobs:
        engine = job.get("engine") or {}
        created = _when(job.get("created_at"))
        prompt = " ".join(job.get("prompt", "").split())
        table.add_row(
            job["id"], _status(job["status"]), str(job.get("tokens", 0)), str(job.get("attempts", 0)),
            str(engine.get("id", "-")), _duration(_seconds(job.get("started_at"), job.get("finished_at"))),
            created.astimezone().strftime("%H:%M:%S") if created else "-",
            Text(prompt[:PROMPT_CHARS] + ("…" if len(prompt) > PROMPT_CHARS else "")),
        )
    console.print(table)


def print_engines(console: Console, data: dict[str, Any]) -> None:
    engines = data.get("engines", [])
    if engines:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("ID", "POOL", "STATE", "HOST", "PID", "GPU", "JOBS", "DONE", "RSS MB", "UP", "MODEL"):
            table.add_column(column, no_wrap=column != "JOBS", overflow="ellipsis",
                             justify="right" if column in ("ID", "PID", "DONE", "RSS MB") else "left")
        for engine in engines:
            jobs = [j["job_id"] for j in engine.get("jobs", [])]
            state = engine.get("state", "?")
            table.add_row(
                str(engine["id"]), engine.get("pool") or "default", Text(state, style=STATE_STYLE.get(state, "")),
                engine.get("host", "?"),
                str(engine.get("pid", "?")), engine.get("gpu") or "cpu",
                ", ".join(jobs) if jobs else "-", str(engine.get("jobs_done", 0)),
                f"{engine.get('rss_mb', 0):.0f}", _duration(engine.get("uptime_s")),
                f"{engine.get('backend') or '?'}: {engine.get('model') or '-'}",
            )
        console.print(table)
        for engine in engines:
            if engine.get("log_file"):
                console.print(f"engine {engine['id']} log: {engine['log_file']}", soft_wrap=True)
    else:
        console.print("no engines")
    for launch in data.get("starting", []):
        console.print(f"starting: engine set {launch['engine_set']} on {_gpu(launch.get('gpu'))}")
