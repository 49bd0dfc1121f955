"""``llmsup run-batch -i in.jsonl -o out.jsonl``: the OpenAI Batch API's file shape, as vLLM's ``run-batch`` reads it.

Each input line is one request, ``{"custom_id": ..., "method": "POST", "url": "/v1/completions", "body": {...}}``
(``/v1/chat/completions`` too); it is sent to the running server's OpenAI route of that url, at most
``concurrency`` at a time, so each line is a job (or ``n`` of them) with its own deadline (the body's
``deadline_s``, else the server's default). Every line is accounted for in the output, in the input's order:
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}`` for an answer (an error
answer included, with its status), ``"response": null`` and ``"error": {"code", "message"}`` for a line that was
not sent (not JSON, another method or url) or got no answer.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llmsup.supervisor.client.base import Endpoint

URLS = ("/v1/completions", "/v1/chat/completions")


@dataclass(frozen=True)
class Outcome:
    lines: int
    answered: int  # 2xx answers
    failed: int  # error answers and lines not sent or not answered


def _error_line(custom_id: object, code: str, message: str) -> dict[str, Any]:
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}


def parse_line(text: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the request, None) for a line that can be sent, else (None, its error line)."""
    try:
        line = json.loads(text)
    except ValueError as exc:
        return None, _error_line(None, "invalid_json", f"not JSON: {exc}")
    if not isinstance(line, dict):
        return None, _error_line(None, "invalid_request", "a line is a JSON object")
    custom_id = line.get("custom_id")
    if line.get("method", "POST") != "POST":
        return None, _error_line(custom_id, "invalid_request", f"method {line.get('method')!r}: only POST")
    if line.get("url") not in URLS:
        return None, _error_line(custom_id, "invalid_request", f"url {line.get('url')!r}: one of {', '.join(URLS)}")
    if not isinstance(line.get("body"), dict):
        return None, _error_line(custom_id, "invalid_request", "body: a JSON object")
    return line, None


async def _send(http: httpx.AsyncClient, endpoint: Endpoint, line: dict[str, Any]) -> dict[str, Any]:
    custom_id = line.get("custom_id")
    try:
        resp = await http.post(line["url"], json=line["body"], headers=endpoint.headers(line["url"]))
    except httpx.HTTPError as exc:
        return _error_line(custom_id, "unreachable", f"{type(exc).__name__}: {exc}")
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
            "response": {"status_code": resp.status_code, "request_id": resp.headers.get("x-request-id")
                         or f"req_{uuid.uuid4().hex}", "body": body}, "error": None}


async def run_batch(endpoint: Endpoint, source: Path, target: Path, concurrency: int = 64,
                    timeout: float = 3600.0, transport: httpx.AsyncBaseTransport | None = None) -> Outcome:
    """Send every line of ``source``, write one result line per input line to ``target``, in order."""
    texts = [t for t in source.read_text().splitlines() if t.strip()]
    results: list[dict[str, Any] | None] = [None] * len(texts)
    todo: list[tuple[int, dict[str, Any]]] = []
    for i, text in enumerate(texts):
        line, error = parse_line(text)
        if line is not None:
            todo.append((i, line))
        else:
            results[i] = error
    pending = iter(todo)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=endpoint.url, timeout=timeout, limits=limits, transport=transport) as http:
        async def worker() -> None:
            for i, line in pending:
                results[i] = await _send(http, endpoint, line)

        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(todo))))))
    done = [r for r in results if r is not None]
    with target.open("w") as out:
        for result in done:
            out.write(json.dumps(result) + "\n")
    answered = sum(1 for r in done if r["response"] is not None and 200 <= r["response"]["status_code"] < 300)
    return Outcome(len(texts), answered, len(texts) - answered)
