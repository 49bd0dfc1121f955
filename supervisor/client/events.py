"""A job's event stream (``GET /v1/jobs/{id}/events``) turned into text: SSE parsing and the text handed out.

Nothing here does I/O.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

TERMINAL = frozenset({"succeeded", "failed", "timed_out", "cancelled", "expired"})


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
    generation); if it differs, the new attempt's text is handed out whole, once. The same rules serve this
    client's streams (events as JSON: ``from_job`` / ``from_token`` / ``from_status``) and the server's streamed
    OpenAI completions (``snapshot`` / ``token`` / ``status``).
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

    def snapshot(self, status: str, output: str, tokens: int, attempts: int | None) -> str:
        """The new text of the job as it stands (``output``: its text; ``tokens``: the pieces streamed so far)."""
        self._attempt(attempts)
        if status == "queued":
            if self.text or self.seq:
                self._restart()
            return ""
        self.text = output
        if status == "running":
            self.seq = tokens
        return self._delta()

    def token(self, seq: int, text: str) -> str | None:
        """The new text, "" for a piece already handed out, None for a gap (resynchronise from a snapshot)."""
        if seq < self.seq:
            return ""
        if seq > self.seq:
            return None
        self.seq += 1
        self.text += text
        return self._delta()

    def status(self, status: str, attempts: int | None) -> None:
        """Queued again, or running (a new attempt): the attempt's text and token seq start over."""
        self._attempt(attempts)
        if status in ("queued", "running") and (self.text or self.seq):
            self._restart()

    def from_job(self, job: dict[str, Any]) -> str:
        return self.snapshot(job["status"], job.get("output") or "", int(job.get("tokens") or 0), job.get("attempts"))

    def from_token(self, event: dict[str, Any]) -> str | None:
        return self.token(int(event.get("seq", -1)), str(event.get("text", "")))

    def from_status(self, event: dict[str, Any]) -> None:
        self.status(str(event.get("status")), event.get("attempts"))


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
