"""What the sync and async clients share: finding the server, errors, SSE parsing, text tracking.

Nothing here does I/O except reading the run directory's files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from llmsup.supervisor.discovery import find_admin_token, find_url, run_dir_default

TERMINAL = frozenset({"succeeded", "failed", "timed_out", "cancelled", "expired"})


class LlmsupError(Exception):
    """An error from the llmsup server (``status_code`` set) or from talking to it."""

    def __init__(self, message: str, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status_code})" if self.status_code else self.message


class ServerUnreachable(LlmsupError):
    """No answer from the server (not started, wrong URL, network)."""


class InvalidRequest(LlmsupError, ValueError):
    """The server refused the request's content (HTTP 400 / 422)."""


class NotFound(LlmsupError, LookupError):
    """No such job or engine (HTTP 404)."""


class Conflict(LlmsupError):
    """The request does not fit the job's current state (HTTP 409)."""


class AuthError(LlmsupError, PermissionError):
    """Admin routes need the admin token (LLMSUP_ADMIN_TOKEN or <run-dir>/admin_token)."""


class QueueFull(LlmsupError):
    """The queue is at its bound (HTTP 429); try again after ``retry_after`` seconds."""

    def __init__(self, message: str, status_code: int | None = 429, detail: Any = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, status_code, detail)
        self.retry_after = retry_after


class JobTimeout(LlmsupError, TimeoutError):
    """A wait ran out before the job reached a terminal status (the job itself goes on)."""


class JobFailed(LlmsupError):
    """``wait(check=True)``: the job ended in a status other than ``succeeded``."""

    def __init__(self, message: str, job: dict[str, Any]) -> None:
        super().__init__(message)
        self.job = job


class BorrowError(LlmsupError):
    """An engine could not be borrowed, or could not be handed back."""


_BY_STATUS: dict[int, type[LlmsupError]] = {400: InvalidRequest, 401: AuthError, 403: AuthError, 404: NotFound,
                                            409: Conflict, 422: InvalidRequest}


def error_from(resp: httpx.Response) -> LlmsupError:
    """The exception for an error answer, carrying the server's message and status code."""
    detail: Any = None
    try:
        body = resp.json()
        message = body.get("error") or body.get("detail") or resp.text if isinstance(body, dict) else resp.text
        detail = body.get("detail") if isinstance(body, dict) else body
    except ValueError:
        message = resp.text or resp.reason_phrase
    message = str(message) or f"HTTP {resp.status_code}"
    if resp.status_code == 429:
        try:
            retry_after: float | None = float(resp.headers.get("Retry-After", ""))
        except ValueError:
            retry_after = None
        return QueueFull(message, 429, detail, retry_after=retry_after)
    if resp.status_code in (401, 403):
        try:
            admin = resp.request.url.path.startswith("/admin")
        except RuntimeError:  # a response built without its request
            admin = False
        if admin:
            message += " (admin token: Client(admin_token=...), LLMSUP_ADMIN_TOKEN, or <run-dir>/admin_token)"
        else:
            message += " (API key: Client(api_key=...), LLMSUP_API_KEY, or <run-dir>/api_key)"
    return _BY_STATUS.get(resp.status_code, LlmsupError)(message, resp.status_code, detail)


def checked(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        raise error_from(resp)
    return resp.json()


@dataclass
class Endpoint:
    """Where the server is and how it was found (for error messages)."""

    url: str
    source: str
    run_dir: Path
    admin_token: str | None  # given explicitly; else looked up at each admin call
    api_key: str | None = None  # given explicitly; else LLMSUP_API_KEY, else <run-dir>/api_key

    @classmethod
    def resolve(cls, url: str | None, run_dir: Path | str | None, admin_token: str | None,
                api_key: str | None = None) -> Endpoint:
        rdir = (Path(run_dir) if run_dir else run_dir_default()).resolve()  # cwd may change later
        if url:
            source = "the url argument"
        elif os.environ.get("LLMSUP_URL"):
            source = "LLMSUP_URL"
        elif (rdir / "server.json").exists():
            source = str(rdir / "server.json")
        else:
            source = f"the default (no LLMSUP_URL, no {rdir / 'server.json'})"
        return cls(find_url(url, rdir), source, rdir, admin_token, api_key)

    def headers(self, path: str) -> dict[str, str]:
        """The admin token goes to /admin/* only; the API key (where there is one) to the job routes."""
        if path.startswith("/admin"):
            token = find_admin_token(self.admin_token, self.run_dir)
        else:
            token = find_api_key(self.api_key, self.run_dir)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def unreachable(self, exc: Exception) -> ServerUnreachable:
        return ServerUnreachable(f"cannot reach llmsup at {self.url} (from {self.source}): {exc}; "
                                 "is `llmsup serve` running?")


def find_api_key(key: str | None = None, run_dir: Path | str | None = None) -> str | None:
    """An API key for the job routes (needed only where the server requires keys)."""
    if key:
        return key
    if os.environ.get("LLMSUP_API_KEY"):
        return os.environ["LLMSUP_API_KEY"]
    try:
        return ((Path(run_dir) if run_dir else run_dir_default()) / "api_key").read_text().strip() or None
    except OSError:
        return None


def submit_body(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value).timestamp()


def time_left(job: dict[str, Any], now: float) -> float | None:
    """Seconds before a running job's deadline (server start time, this machine's clock), else None."""
    started = parse_time(job.get("started_at"))
    if job.get("status") != "running" or started is None:
        return None
    return max(0.0, float(job["deadline_s"]) - (now - started))


class SSEParser:
    """Server-sent events, one line at a time; each complete event's JSON data comes out as a dict."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None

    def feed(self, line: str) -> dict[str, Any] | None:
        line = line.rstrip("\r")
        if not line:
            data, event = "\n".join(self._data), self._event
            self._data, self._event = [], None
            if not data:
                return None
            try:
                payload = json.loads(data)
            except ValueError:
                return None
            if not isinstance(payload, dict):
                return None
            if event and "type" not in payload:
                payload["type"] = event
            return payload
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


class TextTracker:
    """Turns job snapshots, status changes and token events into new text, each piece given once.

    ``sent`` is all text handed out. A job whose engine was lost runs again (a new attempt, its text starting
    over): the new attempt's text is handed out only past ``sent`` while it repeats it (deterministic
    generation); if it differs, the new attempt's text is handed out whole, once.
    """

    def __init__(self) -> None:
        self.sent = ""
        self.text = ""  # the current attempt's output as known here
        self.seq = 0  # next token seq expected from the event stream (per attempt)
        self.attempts: int | None = None
        self._new_attempt = False

    def _restart(self) -> None:
        self.text, self.seq = "", 0
        if self.sent:
            self._new_attempt = True

    def _delta(self) -> str:
        text, sent = self.text, self.sent
        if text.startswith(sent):
            self.sent = text
            if len(text) > len(sent):
                self._new_attempt = False
            return text[len(sent):]
        if sent.startswith(text):
            return ""  # a new attempt repeating what was handed out, or a final output cut shorter
        self.sent = text
        if self._new_attempt:
            self._new_attempt = False
            return text
        return ""  # the same attempt's final text differs from its streamed pieces: keep what was given

    def _attempt(self, attempts: Any) -> None:
        if attempts is None:
            return
        if self.attempts is not None and int(attempts) != self.attempts:
            self._restart()
        self.attempts = int(attempts)

    def from_job(self, job: dict[str, Any]) -> str:
        self._attempt(job.get("attempts"))
        if job["status"] == "queued":
            if self.text or self.seq:
                self._restart()
            return ""
        self.text = job.get("output") or ""
        if job["status"] == "running":
            self.seq = int(job.get("tokens") or 0)
        return self._delta()

    def from_token(self, event: dict[str, Any]) -> str | None:
        """The new text, "" for a piece already handed out, None for a gap (resynchronise from a snapshot)."""
        seq = int(event.get("seq", -1))
        if seq < self.seq:
            return ""
        if seq > self.seq:
            return None
        self.seq += 1
        self.text += str(event.get("text", ""))
        return self._delta()

    def from_status(self, event: dict[str, Any]) -> None:
        """Queued again, or running (a new attempt): the attempt's text and token seq start over."""
        self._attempt(event.get("attempts"))
        if event.get("status") in ("queued", "running") and (self.text or self.seq):
            self._restart()


def apply_event(tracker: TextTracker, event: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None, bool]:
    """One event of ``GET /v1/jobs/{id}/events``: (new text, or None for a gap; the job if the event carries
    it; whether the stream is over). Events: ``job`` (snapshot), ``status``, ``token``, ``end`` (final job)."""
    kind = event.get("type")
    if kind in ("job", "end") and "id" in event and "status" in event:
        job = {k: v for k, v in event.items() if k != "type"}
        return tracker.from_job(job), job, kind == "end" or job["status"] in TERMINAL
    if kind == "token":
        return tracker.from_token(event), None, False
    if kind == "status":
        tracker.from_status(event)  # a terminal one is followed by ``end``, or the stream closes
    return "", None, False


def is_event_stream(resp: httpx.Response) -> bool:
    return resp.status_code == 200 and resp.headers.get("content-type", "").startswith("text/event-stream")


def job_summary(job: dict[str, Any]) -> str:
    return f"{job['id']} {job['status']} tokens={job.get('tokens', 0)}"
