"""Response bodies of the OpenAI-compatible routes (OpenAI's shapes, vLLM's extension fields, llmsup's)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class LlmsupInfo(BaseModel):
    """llmsup's extension of every completion: the job behind it and how it ended."""

    job_id: str
    status: str  # succeeded | timed_out | cancelled | ...
    deadline_s: float | None  # None: it has no deadline (docs/deadlines.md)
    error: str | None = None


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy completion logprobs: per token its text, offset, logprob and top alternatives."""

    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprobOut):
    top_logprobs: list[TopLogprobOut] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


PromptLogprobs = list[dict[str, dict[str, float | int | str | None]] | None]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = Field(
        description="stop | length, and llmsup's: timeout (deadline reached), cancelled (cancelled or killed)"
    )
    stop_reason: int | str | None = None
    prompt_logprobs: PromptLogprobs | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None
    llmsup: LlmsupInfo | None = None  # with several choices: each choice's own job


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    llmsup: LlmsupInfo | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[dict[str, object]] = Field(default_factory=list)
    reasoning: str | None = Field(None, description="the model's reasoning (with a reasoning parser), as vLLM")
    reasoning_content: str | None = Field(None, description="the same, under its older name")


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = Field(description="stop | length | tool_calls | timeout | cancelled (see completions)")
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    llmsup: LlmsupInfo | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    prompt_logprobs: PromptLogprobs | None = None
    prompt_token_ids: list[int] | None = None
    llmsup: LlmsupInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmsup"
    root: str | None = None
    parent: str | None = Field(None, description="a LoRA adapter's base model")
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody
