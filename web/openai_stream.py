"""Streaming answers of the OpenAI routes: the jobs of one request merged into one SSE stream of chunks.

One chunk per token, as vLLM's server sends them; ``choices[0].index`` says which choice (job) a chunk is of.
The token that reaches ``max_tokens`` is known to be the last one and travels in the chunk that carries the
``finish_reason``, as with vLLM; a generation that ends on a stop (EOS, stop string) is only known to have
ended when its job does, so its finish chunk carries what is left (usually nothing, as vLLM's for an EOS).
Logprobs and token ids travel with the job's result, not the token stream: a stream that asks for them gets
its chunks, each with its token's logprobs, when the job ends. ``stream_options.include_usage`` adds a usage
chunk at the end, ``continuous_usage_stats`` a usage object to every chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from llmsup.supervisor.jobs import Job, JobStatus
from llmsup.supervisor.service import Supervisor
from llmsup.web import sse
from llmsup.web.follow import TextTracker, Update, follow
from llmsup.web.openai_format import finish_reason, info, usage, usage_of

# make(index, text, finish=None, role=False, job=None, start=0, count=0) -> chunk; start/count: the tokens
Chunk = Callable[..., dict[str, Any]]


@dataclass
class ChoiceState:
    index: int
    job_id: str
    max_tokens: int
    prompt_tokens: int
    buffered: bool  # logprobs / token ids wanted: send when the job ends
    tracker: TextTracker = field(default_factory=TextTracker)
    pieces: list[str] = field(default_factory=list)
    pending: str = ""  # the last token's text, held for the finish chunk
    tokens: int = 0
    final: Job | None = None


async def merged(sup: Supervisor, job_ids: list[str], ping_s: float) -> AsyncIterator[tuple[int, Update | None]]:
    """Updates of several jobs as they happen, tagged with the job's index; ``(i, None)``: job i's feed ended."""
    queue: asyncio.Queue[tuple[int, Update | None | BaseException]] = asyncio.Queue()

    async def pump(i: int, job_id: str) -> None:
        try:
            async for u in follow(sup, job_id, ping_s if i == 0 else 86_400.0):
                await queue.put((i, u))
        except Exception as exc:  # JobNotFound and the like: handed to the consumer (cancellation passes)
            await queue.put((i, exc))
            return
        await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, job_id)) for i, job_id in enumerate(job_ids)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                remaining -= 1
            yield i, item
    finally:
        for task in tasks:
            task.cancel()


def error_event(message: str, code: str, status: int = 500) -> bytes:
    kind = "invalid_request_error" if status == 400 else "server_error"
    return sse.event({"error": {"message": message, "type": kind, "param": None, "code": code}})


def chunks(sup: Supervisor, states: list[ChoiceState], make: Chunk, include_usage: bool, continuous: bool,
           n: int, prompt_lengths: list[int | None], head: list[dict[str, Any]],
           failure: Callable[[Job], tuple[int, str, str] | None]) -> AsyncIterator[bytes]:
    """The SSE body: ``head`` chunks first (chat's role, an echo), then each choice's chunks, then usage."""

    def with_usage(chunk: dict[str, Any], state: ChoiceState) -> dict[str, Any]:
        if continuous:
            chunk["usage"] = usage_of(state.prompt_tokens, state.tokens).model_dump()
        return chunk

    async def body() -> AsyncIterator[bytes]:
        for chunk in head:
            yield sse.event(with_usage(chunk, states[0]))
        async for i, u in merged(sup, [s.job_id for s in states], sup.settings.sse_ping_s):
            state = states[i]
            if u is None:
                continue
            if u.kind == "ping":
                yield sse.PING
                continue
            delta = state.tracker.update(u)
            terminal = u.status is not None and u.status.terminal
            if u.kind == "token":
                state.tokens = max(state.tokens, u.seq + 1)
                if state.buffered:
                    state.pieces.append(delta)
                elif state.tokens >= state.max_tokens:
                    state.pending += delta  # the certain last token: it goes with the finish_reason
                else:
                    yield sse.event(with_usage(make(state.index, delta), state))
            elif delta and not terminal:
                if state.buffered:
                    state.pieces.append(delta)
                else:
                    yield sse.event(with_usage(make(state.index, delta), state))
            if not terminal:
                continue
            job = state.final = u.job
            assert job is not None
            failed = failure(job)
            if failed is not None:
                for other in states:
                    if other.final is None:
                        sup.cancel(other.job_id, note="cancelled: another choice of its request failed")
                yield error_event(*failed[1:], status=failed[0])
                yield b"data: [DONE]\n\n"
                return
            state.tokens = job.tokens
            state.prompt_tokens = job.prompt_tokens or state.prompt_tokens
            for chunk in _final_chunks(state, job, delta, make):
                yield sse.event(with_usage(chunk, state))
        if any(s.final is None for s in states):
            yield error_event("the server is shutting down", "shutdown")
        elif include_usage:
            finals = [s.final for s in states if s.final is not None]
            yield sse.event({**make(0, ""), "choices": [], "usage": usage(finals, n, prompt_lengths).model_dump()})
        yield b"data: [DONE]\n\n"

    return body()


def _final_chunks(state: ChoiceState, job: Job, delta: str, make: Chunk) -> list[dict[str, Any]]:
    """The choice's last chunk(s): the held-back text, or every buffered token with its logprobs."""
    reason = finish_reason(job)
    if not state.buffered:
        last = make(state.index, state.pending + delta, reason, job=job, start=max(0, job.tokens - 1),
                    count=1 if state.pending else 0)
        last["llmsup"] = info(job).model_dump()
        return [last]
    pieces = state.pieces + ([delta] if delta else [])
    if "".join(pieces) != job.output or (job.logprobs and len(pieces) != len(job.logprobs)):
        pieces = [job.output]  # the stream lost pieces (the result overtook them): one chunk with everything
    out = []
    for k, text in enumerate(pieces):
        whole = len(pieces) == 1
        is_last = k == len(pieces) - 1
        chunk = make(state.index, text, reason if is_last else None, job=job, start=0 if whole else k,
                     count=job.tokens if whole else 1)
        if is_last:
            chunk["llmsup"] = info(job).model_dump()
        out.append(chunk)
    return out


def stream_response(sup: Supervisor, request: Any, job_ids: list[str], body: AsyncIterator[bytes],
                    cancel_note: str, release: Callable[[], None] | None = None) -> sse.EventStream:
    """The SSE response; ``release`` gives back the request's stream slot when the stream ends."""
    def on_close(completed: bool) -> None:
        if completed or not sup.settings.cancel_on_disconnect:
            return
        for job_id in job_ids:
            if not sup.get(job_id).status.terminal:
                sup.cancel(job_id, note=cancel_note)

    web_metrics = getattr(request.app.state, "web_metrics", None)
    return sse.EventStream(body, on_close=on_close, headers={"X-Llmsup-Job-Id": ",".join(job_ids)},
                           gauge=web_metrics.sse_streams if web_metrics else None, release=release)


def failed_job(job: Job) -> tuple[int, str, str] | None:
    """(HTTP status, message, code) of a job that ended without an answer, else None."""
    from llmsup.engines.protocol import REJECTED

    if job.status is JobStatus.FAILED:
        if job.error and job.error.startswith(REJECTED + ":"):
            return 400, job.error.removeprefix(REJECTED + ":").strip(), "invalid_request"
        return 500, f"job {job.id} failed: {job.error}", "job_failed"
    if job.status is JobStatus.EXPIRED:
        return 429, f"job {job.id} expired: {job.error}", "job_expired"
    return None
