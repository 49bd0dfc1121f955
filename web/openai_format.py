"""A finished job -> the parts of an OpenAI answer: finish_reason, usage, logprobs (completion and chat
forms, as vLLM fills them), vLLM's prompt_logprobs, and llmsup's extension object."""

from __future__ import annotations

from collections.abc import Sequence

from llmsup.engines.protocol import TokenLogprob
from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.web.openai_responses import (
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    LlmsupInfo,
    PromptLogprobs,
    TopLogprobOut,
    Usage,
)


def finish_reason(job: Job) -> str | None:
    if job.status is JobStatus.SUCCEEDED:
        return job.finish_reason or "stop"
    if job.status is JobStatus.TIMED_OUT:
        return "timeout"
    if job.status is JobStatus.CANCELLED:
        return "cancelled"
    return None


def info(job: Job) -> LlmsupInfo:
    return LlmsupInfo(job_id=job.id, status=job.status.value, deadline_s=job.deadline_s, error=job.error)


def usage_of(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def usage(jobs: Sequence[Job], n: int = 1, prompt_lengths: Sequence[int | None] = ()) -> Usage:
    """Prompt tokens once per prompt (``n`` choices share one), completion tokens of every choice."""
    prompt = 0
    for i in range(0, len(jobs), max(1, n)):
        known = prompt_lengths[i // max(1, n)] if i // max(1, n) < len(prompt_lengths) else None
        prompt += jobs[i].prompt_tokens or known or 0
    return usage_of(prompt, sum(j.tokens for j in jobs))


def _token_str(entry: TokenLogprob | None, token_id: int, text: str, as_ids: bool) -> str:
    return f"token_id:{token_id}" if as_ids else text


def completion_logprobs(entries: Sequence[TokenLogprob], k: int, as_ids: bool = False, offset: int = 0,
                        prompt: Sequence[TokenLogprob] = (), first_prompt_token: str | None = None) -> CompletionLogprobs:
    """OpenAI's legacy form: the prompt's tokens first when echoed (its first token has no logprob)."""
    out = CompletionLogprobs(text_offset=[], token_logprobs=[], tokens=[], top_logprobs=[])
    position = offset

    def add(token: str, logprob: float | None, top: dict[str, float] | None) -> None:
        nonlocal position
        out.text_offset.append(position)
        out.tokens.append(token)
        out.token_logprobs.append(logprob)
        out.top_logprobs.append(top)
        position += len(token)

    if first_prompt_token is not None:
        add(first_prompt_token, None, None)
    for e in (*prompt, *entries):
        top = {_token_str(None, t.token_id, t.token, as_ids): t.logprob for t in e.top[:k]}
        token = _token_str(e, e.token_id, e.token, as_ids)
        top.setdefault(token, e.logprob)
        add(token, e.logprob, top)
    return out


def chat_logprobs(entries: Sequence[TokenLogprob], k: int, as_ids: bool = False) -> ChatLogprobs:
    def one(token_id: int, text: str, logprob: float) -> TopLogprobOut:
        token = f"token_id:{token_id}" if as_ids else text
        return TopLogprobOut(token=token, logprob=logprob, bytes=list(text.encode("utf-8", "replace")))

    content = []
    for e in entries:
        head = one(e.token_id, e.token, e.logprob)
        content.append(ChatTokenLogprob(token=head.token, logprob=head.logprob, bytes=head.bytes,
                                        top_logprobs=[one(t.token_id, t.token, t.logprob) for t in e.top[:k]]))
    return ChatLogprobs(content=content)


def prompt_logprobs_out(entries: Sequence[TokenLogprob], wanted: bool) -> PromptLogprobs | None:
    """vLLM's ``prompt_logprobs``: None for the first prompt token, then {token_id: {logprob, rank,
    decoded_token}} with the token itself and its top alternatives."""
    if not wanted:
        return None
    out: PromptLogprobs = [None]
    for e in entries:
        position: dict[str, dict[str, float | int | str | None]] = {
            str(e.token_id): {"logprob": e.logprob, "rank": e.rank or None, "decoded_token": e.token}}
        for rank, t in enumerate(e.top, start=1):
            position.setdefault(str(t.token_id), {"logprob": t.logprob, "rank": rank, "decoded_token": t.token})
        out.append(position)
    return out
