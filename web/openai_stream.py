"""Streaming answers of the OpenAI routes: the jobs of one request merged into one SSE stream of chunks.

One chunk per token, as vLLM's server sends them; ``choices[0].index`` says which choice (job) a chunk is of.
A choice that asks for logprobs (or token ids) gets each token's entry (id) in that token's chunk, live, as the
token is generated (completions: ``text_offset`` counts on over the choice's text, as vLLM's does). The token
that reaches ``max_tokens`` is known to be the last one and travels in the chunk that carries the
``finish_reason``, with its entry, as with vLLM; a generation that ends on a stop (EOS, stop string) is only
known to have ended when its job does, so its finish chunk carries what is left (usually nothing, as vLLM's for
an EOS). The job's result is authoritative: the finish chunk also carries every entry and id of the result
that was not sent yet (the result overtook the last tokens, or the engine streamed none), and no position's
entry is ever sent twice (a retried job's new attempt repeats positions already sent). The prompt's logprobs
and ids are not streamed (they are in the non-streamed answer only). ``stream_options.include_usage`` adds a
usage chunk at the end, ``continuous_usage_stats`` a usage object to every chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmsup.engines.protocol import TokenLogprob
from llmsup.supervisor.client.events import TextTracker
from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.port import ControlPlane
from llmsup.web import sse
from llmsup.web.follow import Update, follow, new_text
from llmsup.web.openai_format import finish_reason, info, usage, usage_of

# make(index, text, finish=None, role=False, entries=(), ids=(), offset=0) -> chunk: ``entries`` / ``ids`` are the
# logprob records / token ids of the chunk's tokens, ``offset`` the text offset of its first entry (completions)
Chunk = Callable[..., dict[str, Any]]


@dataclass
class ChoiceState:
    """One choice (job) of a streamed request: what its client has been sent so far."""

    index: int
    job_id: str
    max_tokens: int
    prompt_tokens: int
    wants_logprobs: bool = False
    wants_ids: bool = False
    offset: int = 0  # completions: text_offset of the next logprob entry (after an echoed prompt: its length)
    tracker: TextTracker = field(default_factory=TextTracker)
    pending: str = ""  # the last token's text, held for the finish chunk
    pending_entries: list[TokenLogprob] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)
    entries_done: int = 0  # positions whose logprob entry was sent or is pending
    ids_done: int = 0  # positions whose token id was sent or is pending
    tokens: int = 0
    final: Job | None = None

    def token_extras(self, u: Update) -> tuple[list[TokenLogprob], list[int]]:
        """The entry and id of a streamed token, when it is the next position not sent yet (a retry repeats
        positions already sent; after a gap, the rest waits for the result)."""
        entries: list[TokenLogprob] = []
        ids: list[int] = []
        if self.wants_logprobs and u.logprob is not None and u.seq == self.entries_done:
            entries.append(u.logprob)
            self.entries_done += 1
        if self.wants_ids and u.token_id is not None and u.seq == self.ids_done:
            ids.append(u.token_id)
            self.ids_done += 1
        return entries, ids

    def job_extras(self, job: Job) -> tuple[list[TokenLogprob], list[int]]:
        """The entries and ids a job record holds past those sent (a running job's: streamed so far)."""
        entries = list(job.logprobs[self.entries_done:]) if self.wants_logprobs else []
        ids = list(job.token_ids[self.ids_done:]) if self.wants_ids else []
        self.entries_done += len(entries)
        self.ids_done += len(ids)
        return entries, ids

    def hold(self, text: str, entries: list[TokenLogprob], ids: list[int]) -> None:
        self.pending += text
        self.pending_entries += entries
        self.pending_ids += ids

    def chunk(self, make: Chunk, text: str, entries: Sequence[TokenLogprob] = (), ids: Sequence[int] = (),
              finish: str | None = None) -> dict[str, Any]:
        """A chunk of this choice; the next entry's text offset moves past this one's tokens (as vLLM counts)."""
        out = make(self.index, text, finish, entries=entries, ids=ids, offset=self.offset)
        logprobs = out["choices"][0].get("logprobs") if out.get("choices") else None
        if isinstance(logprobs, dict) and logprobs.get("text_offset"):
            self.offset = logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
        return out


async def merged(sup: ControlPlane, job_ids: list[str], ping_s: float) -> AsyncIterator[tuple[int, Update | None]]:
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


def chunks(sup: ControlPlane, states: list[ChoiceState], make: Chunk, include_usage: bool, continuous: bool,  # noqa: C901 - its body: one merged loop over every choice's token, snapshot, end and ping updates
           n: int, prompt_lengths: list[int | None], head: list[dict[str, Any]],
           failure: Callable[[Job], tuple[int, str, str] | None]) -> AsyncIterator[bytes]:
    """The SSE body: ``head`` chunks first (chat's role, an echo), then each choice's chunks, then usage."""

    def with_usage(chunk: dict[str, Any], state: ChoiceState) -> dict[str, Any]:
        if continuous:
            chunk["usage"] = usage_of(state.prompt_tokens, state.tokens).model_dump()
        return chunk

    async def body() -> AsyncIterator[bytes]:  # noqa: C901 - one merged loop over every choice's token, snapshot, end and ping updates
        for chunk in head:
            yield sse.event(with_usage(chunk, states[0]))
        async for i, u in merged(sup, [s.job_id for s in states], sup.settings.sse_ping_s):
            state = states[i]
            if u is None:
                continue
            if u.kind == "ping":
                yield sse.PING
                continue
            delta = new_text(state.tracker, u)
            terminal = u.status is not None and u.status.terminal
            if u.kind == "token":
                state.tokens = max(state.tokens, u.seq + 1)
                entries, ids = state.token_extras(u)
                if state.tokens >= state.max_tokens:
                    state.hold(delta, entries, ids)  # the certain last token: it goes with the finish_reason
                else:
                    yield sse.event(with_usage(state.chunk(make, delta, entries, ids), state))
            elif u.kind == "job" and u.job is not None and not terminal:  # a snapshot: what ran before it
                entries, ids = state.job_extras(u.job)
                if delta or entries or ids:
                    yield sse.event(with_usage(state.chunk(make, delta, entries, ids), state))
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
            yield sse.event(with_usage(_final_chunk(state, job, delta, make), state))
        if any(s.final is None for s in states):
            yield error_event("the server is shutting down", "shutdown")
        elif include_usage:
            finals = [s.final for s in states if s.final is not None]
            yield sse.event({**make(0, ""), "choices": [], "usage": usage(finals, n, prompt_lengths).model_dump()})
        yield b"data: [DONE]\n\n"

    return body()


def _final_chunk(state: ChoiceState, job: Job, delta: str, make: Chunk) -> dict[str, Any]:
    """The choice's last chunk: the held-back last token and what the result adds (text, entries, ids not sent)."""
    entries, ids = state.job_extras(job)
    last = state.chunk(make, state.pending + delta, state.pending_entries + entries, state.pending_ids + ids,
                       finish=finish_reason(job))
    last["llmsup"] = info(job).model_dump()
    return last


def stream_response(sup: ControlPlane, request: Any, job_ids: list[str], body: AsyncIterator[bytes],
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
