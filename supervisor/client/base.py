"""What every client call shares: where the server is, which credential goes to which route, request bodies, time.

Nothing here does I/O except reading the run directory's files. The errors are in ``client_errors`` (and
importable from ``client``), the event stream's parsing in ``client_events``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict

from llmsup.supervisor.client.discovery import find_admin_token, find_url, read_private, run_dir_default
from llmsup.supervisor.client.errors import ServerUnreachable, checked, error_from
from llmsup.supervisor.client.events import TERMINAL, SSEParser, TextTracker, apply_event, is_event_stream
from llmsup.supervisor.runfiles import API_KEY, SERVER_FILE

__all__ = [  # with the event stream's parsing and the error mapping, as before they had modules of their own
    "TERMINAL", "AtEndpoint", "Deadline", "Endpoint", "JobFields", "SSEParser", "SubmitParams", "TextTracker",
    "apply_event", "checked", "error_from", "find_api_key", "is_event_stream", "parse_time", "submit_body", "time_left",
]
WAIT_STEP_S = 25.0  # one long-poll (``GET /v1/jobs/{id}?wait_s=``) at the most; the server allows 60
PIPELINE_POLL_S = 1.0  # a pipeline long-poll ends when a step ends; a step that starts shows within this


@dataclass(frozen=True)
class Endpoint:
    """Where the server is, how it was found (for error messages), and the credentials given explicitly."""

    url: str
    source: str
    run_dir: Path
    admin_token: str | None  # given explicitly; else looked up at each admin call
    api_key: str | None = None  # given explicitly; else LLMSUP_API_KEY or VLLM_API_KEY, else <run-dir>/api_key

    @classmethod
    def resolve(cls, url: str | None, run_dir: Path | str | None, admin_token: str | None,
                api_key: str | None = None) -> Endpoint:
        rdir = (Path(run_dir) if run_dir else run_dir_default()).resolve()  # cwd may change later
        if url:
            source = "the url argument"
        elif os.environ.get("LLMSUP_URL"):
            source = "LLMSUP_URL"
        elif read_private(rdir / SERVER_FILE) is not None:
            source = str(rdir / SERVER_FILE)
        elif (rdir / SERVER_FILE).exists():
            source = f"the default ({rdir / SERVER_FILE} ignored: not a private file of this user)"
        else:
            source = f"the default (no LLMSUP_URL, no {rdir / SERVER_FILE})"
        return cls(find_url(url, rdir), source, rdir, admin_token, api_key)

    def headers(self, path: str) -> dict[str, str]:
        """The admin token goes to /admin/* only; the API key (where there is one) to every other route."""
        if path.startswith("/admin"):
            token = find_admin_token(self.admin_token, self.run_dir)
        else:
            token = find_api_key(self.api_key, self.run_dir)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def unreachable(self, exc: Exception) -> ServerUnreachable:
        return ServerUnreachable(f"cannot reach llmsup at {self.url} (from {self.source}): {exc}; "
                                 "is `llmsup serve` running?")


class AtEndpoint:
    """A client's ``url`` and ``run_dir``, from its ``endpoint``."""

    endpoint: Endpoint

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def run_dir(self) -> Path:
        return self.endpoint.run_dir


def find_api_key(key: str | None = None, run_dir: Path | str | None = None) -> str | None:
    """An API key for the job routes (needed only where the server requires keys)."""
    if key:
        return key
    for variable in ("LLMSUP_API_KEY", "VLLM_API_KEY"):  # the second: as the server reads it (vLLM's name)
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        return ((Path(run_dir) if run_dir else run_dir_default()) / API_KEY).read_text().strip() or None
    except OSError:
        return None


class SubmitParams(TypedDict, total=False):
    """The optional fields of ``POST /v1/jobs`` (None: the server's default)."""

    deadline_s: float | None
    max_tokens: int | None
    priority: int | None
    idempotency_key: str | None
    temperature: float | None
    stop: list[str] | None
    queue_timeout_s: float | None
    top_p: float | None
    top_k: int | None
    seed: int | None
    ignore_eos: bool | None
    min_tokens: int | None


def submit_body(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}


@dataclass(frozen=True)
class Deadline:
    """The end of a wait on the monotonic clock (``at`` None: no limit), and the timeout it came from."""

    at: float | None
    timeout: float | None

    @classmethod
    def after(cls, timeout: float | None) -> Deadline:
        return cls(None if timeout is None else time.monotonic() + timeout, timeout)

    def left(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def step(self, cap: float) -> float:
        """How long the next wait may last: ``cap``, or less where the deadline comes first."""
        left = self.left()
        return cap if left is None else min(cap, left)


class JobFields:
    """A job handle's fields as attributes. ``id`` and ``done`` read the last snapshot (``data``, the job's
    JSON); the others read ``_snapshot()``: the last one too, or (the sync handle) a fresh one until the job ended."""

    data: dict[str, Any]

    def _snapshot(self) -> dict[str, Any]:
        return self.data

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def done(self) -> bool:
        """Whether the last snapshot is terminal (no request)."""
        return self.data["status"] in TERMINAL

    @property
    def status(self) -> str:
        return self._snapshot()["status"]

    @property
    def output(self) -> str:
        return self._snapshot()["output"]

    @property
    def tokens(self) -> int:
        return self._snapshot()["tokens"]

    @property
    def error(self) -> str | None:
        return self._snapshot()["error"]

    @property
    def engine(self) -> dict[str, Any] | None:
        return self._snapshot()["engine"]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.data['status']} tokens={self.data.get('tokens', 0)}>"


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value).timestamp()


def time_left(job: dict[str, Any], now: float) -> float | None:
    """Seconds before a running job's deadline (server start time, this machine's clock), else None."""
    started = parse_time(job.get("started_at"))
    if job.get("status") != "running" or started is None or job.get("deadline_s") is None:
        return None
    return max(0.0, float(job["deadline_s"]) - (now - started))
