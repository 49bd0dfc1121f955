"""Request and response bodies of the OpenAI-compatible routes.

Accepted: OpenAI's fields, the vLLM extension fields that map onto a job's sampling parameters (``top_k``,
``seed``, ``ignore_eos``, ``min_tokens``, ``priority`` with vLLM's meaning: lower runs first), and llmsup's
extensions (``deadline_s`` or its alias ``timeout``: run-time limit in seconds; ``queue_timeout_s``).
Fields llmsup knows but cannot honour are accepted only at their neutral value (``n=1``, ``logprobs=null``,
``presence_penalty=0``, ...): anything else is a 422 that names the field. Unknown fields are a 422 too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from llmsup.web.schemas import JSONModel
from pydantic import BaseModel, ConfigDict, Field, model_validator

PositiveSeconds = Annotated[float, Field(gt=0, le=86_400)]


def only(*values: Any, **schema: Any) -> Any:
    """A field llmsup accepts only at its neutral value(s): said in the OpenAPI schema, checked in ``_check``."""
    extra = dict(schema) if schema else {"enum": [*values, None]}
    return Field(None, json_schema_extra=extra, description="accepted for compatibility; only the neutral value")


class StreamOptions(JSONModel):
    include_usage: bool = False


# field -> (test of a value llmsup can honour, what it can honour)
NEUTRAL: dict[str, tuple[Any, str]] = {
    "n": (lambda v: v == 1, "1"),
    "best_of": (lambda v: v == 1, "1"),
    "logprobs": (lambda v: v in (False, 0), "null/false"),
    "top_logprobs": (lambda v: v == 0, "null/0"),
    "suffix": (lambda v: v == "", "null"),
    "presence_penalty": (lambda v: v == 0, "0"),
    "frequency_penalty": (lambda v: v == 0, "0"),
    "repetition_penalty": (lambda v: v == 1, "1"),
    "length_penalty": (lambda v: v == 1, "1"),
    "min_p": (lambda v: v == 0, "0"),
    "logit_bias": (lambda v: not v, "null/{}"),
    "stop_token_ids": (lambda v: not v, "null/[]"),
    "use_beam_search": (lambda v: v is False, "false"),
    "include_stop_str_in_output": (lambda v: v is False, "false"),
    "skip_special_tokens": (lambda v: v is True, "true"),
    "spaces_between_special_tokens": (lambda v: v is True, "true"),
    "tools": (lambda v: not v, "null/[]"),
    "tool_choice": (lambda v: v == "none", "null/\"none\""),
    "chat_template": (lambda v: False, "null (the server's template is used)"),
    "chat_template_kwargs": (lambda v: not v, "null/{}"),
    "continue_final_message": (lambda v: v is False, "false"),
}


class _Sampling(JSONModel):
    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"not": {"required": ["deadline_s", "timeout"]}})

    model: Annotated[str | None, Field(max_length=256, description="a served model (GET /v1/models)")] = None
    max_tokens: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    stop: str | Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=16)] | None = None
    seed: Annotated[int | None, Field(ge=0, le=2**53 - 1)] = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: Annotated[str | None, Field(max_length=256, description="recorded nowhere; accepted for compatibility")] = None
    n: Annotated[int | None, only(1)]
    presence_penalty: Annotated[float | None, only(0)]
    frequency_penalty: Annotated[float | None, only(0)]
    logit_bias: Annotated[dict[str, float] | None, only(maxProperties=0)]
    # vLLM extensions
    top_k: Annotated[int | None, Field(ge=-1, le=100_000, description="-1 or 0: disabled")] = None
    min_p: Annotated[float | None, only(0)]
    repetition_penalty: Annotated[float | None, only(1)]
    length_penalty: Annotated[float | None, only(1)]
    ignore_eos: bool | None = None
    min_tokens: Annotated[int | None, Field(ge=0, le=1_000_000, description="at most max_tokens (422 otherwise)")] = None
    stop_token_ids: Annotated[list[int] | None, only(maxItems=0)]
    use_beam_search: Annotated[bool | None, only(False)]
    include_stop_str_in_output: Annotated[bool | None, only(False)]
    skip_special_tokens: Annotated[bool | None, only(True)]
    spaces_between_special_tokens: Annotated[bool | None, only(True)]
    priority: Annotated[int | None, Field(ge=-1000, le=1000, description="vLLM's meaning: lower runs first")] = None
    # llmsup extensions
    deadline_s: Annotated[PositiveSeconds | None, Field(description="llmsup: run-time limit in seconds")] = None
    timeout: Annotated[PositiveSeconds | None, Field(description="llmsup: alias of deadline_s")] = None
    queue_timeout_s: Annotated[PositiveSeconds | None, Field(description="llmsup: longest wait in the queue")] = None

    @model_validator(mode="after")
    def _check(self) -> "_Sampling":
        for name, (ok, allowed) in NEUTRAL.items():
            value = getattr(self, name, None)
            if value is not None and not ok(value):
                raise ValueError(f"{name}={value!r} is not supported by llmsup (only {allowed})")
        if {"deadline_s", "timeout"} <= self.model_fields_set:
            raise ValueError("give deadline_s or timeout, not both")
        return self

    @property
    def deadline(self) -> float | None:
        return self.deadline_s if self.deadline_s is not None else self.timeout

    def extra_params(self) -> dict[str, Any]:
        """JobRequest.extra: the sampling parameters beyond max_tokens, temperature and stop."""
        extra: dict[str, Any] = {}
        if self.top_p is not None:
            extra["top_p"] = self.top_p
        if self.top_k is not None:
            extra["top_k"] = max(0, self.top_k)
        for name in ("seed", "ignore_eos", "min_tokens"):
            if getattr(self, name) is not None:
                extra[name] = getattr(self, name)
        return extra

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(_Sampling):
    prompt: Annotated[str, Field(min_length=1)] | Annotated[
        list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=1)
    ] = Field(description="one prompt (a list of exactly one string is accepted too)")
    echo: bool | None = None
    suffix: Annotated[str | None, only("")]
    best_of: Annotated[int | None, only(1)]
    logprobs: Annotated[int | None, only(0)]

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(JSONModel):
    type: Literal["text"]
    text: str


class ChatMessage(JSONModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: Annotated[str | None, Field(max_length=256)] = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ResponseFormat(JSONModel):
    type: Literal["text"]


class ChatCompletionRequest(_Sampling):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"allOf": [
        {"not": {"required": ["deadline_s", "timeout"]}}, {"not": {"required": ["max_tokens", "max_completion_tokens"]}},
    ]})

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1000)]
    max_completion_tokens: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    logprobs: Annotated[bool | None, only(False)]
    top_logprobs: Annotated[int | None, only(0)]
    tools: Annotated[list[dict[str, Any]] | None, only(maxItems=0)]
    tool_choice: Annotated[str | dict[str, Any] | None, only("none")]
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    add_generation_prompt: bool = True
    continue_final_message: Annotated[bool | None, only(False)]
    chat_template: Annotated[str | None, only()]
    chat_template_kwargs: Annotated[dict[str, Any] | None, only(maxProperties=0)]

    @model_validator(mode="after")
    def _tokens(self) -> "ChatCompletionRequest":
        if {"max_tokens", "max_completion_tokens"} <= self.model_fields_set:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


# responses -------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class LlmsupInfo(BaseModel):
    """llmsup's extension of every completion: the job behind it and how it ended."""

    job_id: str
    status: str  # succeeded | timed_out | cancelled | ...
    deadline_s: float
    error: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None = Field(
        description="stop | length, and llmsup's: timeout (deadline reached), cancelled (cancelled or killed)"
    )


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    llmsup: LlmsupInfo | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str | None = Field(description="stop | length | timeout | cancelled (see completions)")


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    llmsup: LlmsupInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmsup"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody
