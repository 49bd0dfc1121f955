"""Request bodies of the OpenAI-compatible routes, as vLLM's server takes them.

Accepted: OpenAI's fields, vLLM's extension fields (``top_k``, ``min_p``, ``repetition_penalty``,
``stop_token_ids``, ``prompt_logprobs``, ``return_token_ids``, ``structured_outputs``, ``priority`` with vLLM's
meaning: lower runs first, ...) and llmsup's (``deadline_s`` or its alias ``timeout``: run-time limit in
seconds; ``queue_timeout_s``). Unknown fields are ignored with a warning in the log, as vLLM does. Known
fields are checked strictly (no ``"3"`` for 3); a field llmsup knows but cannot honour is accepted only at its
neutral value (``best_of=1``, ``suffix=null``...). Whether the serving backend can
honour the rest (penalties, logprobs, structured outputs...) is checked per backend (``web/openai_params.py``).
Invalid requests are answered 400 with OpenAI's error body.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from llmsup.web.schemas import JSONModel

log = logging.getLogger("llmsup.web")
PositiveSeconds = Annotated[float, Field(gt=0, le=86_400)]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
MAX_CHOICES = 128  # n x prompts of one request (each is one job)
_WARNED: set[frozenset[str]] = set()  # sets of ignored field names already logged
WARNED_MAX, NAMES_MAX, NAME_CHARS = 1000, 16, 64  # its bounds: sets, names a set, characters a name (~1 MB in all)


def only(*values: Any, **schema: Any) -> Any:
    """A field llmsup accepts only at its neutral value(s): said in the OpenAPI schema, checked in ``_check``."""
    extra: dict[str, Any] = dict(schema) if schema else {"enum": [*values, None]}
    return Field(None, json_schema_extra=extra, description="accepted for compatibility; only the neutral value")


class Lenient(JSONModel):
    """A body (or part of one) that ignores unknown fields, logging them once per set of names, as vLLM does."""

    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _warn_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
            names = [str(k) for k in data if k not in known]
            if names:
                shown = sorted({name[:NAME_CHARS] for name in names})
                key = frozenset(shown[:NAMES_MAX])
                if key not in _WARNED and len(_WARNED) < WARNED_MAX:
                    _WARNED.add(key)
                    more = f" and {len(shown) - NAMES_MAX} more" if len(shown) > NAMES_MAX else ""
                    log.warning("The following fields were present in the request but ignored: %s%s (%s)",
                                shown[:NAMES_MAX], more, cls.__name__)
        return data


class StreamOptions(Lenient):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class StructuredOutputs(Lenient):
    """vLLM's ``structured_outputs``: exactly one constraint."""

    json_: Annotated[dict[str, Any] | str | None, Field(alias="json")] = None
    regex: Annotated[str | None, Field(max_length=10_000)] = None
    choice: Annotated[list[Annotated[str, Field(max_length=1000)]] | None, Field(min_length=1, max_length=1000)] = None
    grammar: Annotated[str | None, Field(max_length=20_000)] = None
    json_object: bool | None = None

    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one(self) -> "StructuredOutputs":
        given = [n for n in ("json_", "regex", "choice", "grammar", "json_object") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("structured_outputs takes exactly one of json, regex, choice, grammar, json_object")
        return self


class JSONSchemaFormat(Lenient):
    name: Annotated[str, Field(max_length=256)] = "schema"
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None
    description: str | None = None

    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)


class ResponseFormat(Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema(self) -> "ResponseFormat":
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format of type json_schema needs json_schema.schema")
        return self


# field -> (test of a value llmsup can honour, what it can honour)
NEUTRAL: dict[str, tuple[Any, str]] = {
    "best_of": (lambda v: v == 1, "1"),
    "suffix": (lambda v: v == "", "null"),
    "spaces_between_special_tokens": (lambda v: v is True, "true"),
    "bad_words": (lambda v: not v, "null/[]"),
}


class SamplingRequest(Lenient):
    model_config = ConfigDict(extra="ignore", strict=True,
                              json_schema_extra={"not": {"required": ["deadline_s", "timeout"]}})

    model: Annotated[str | None, Field(max_length=256, description="a served model (GET /v1/models)")] = None
    max_tokens: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    n: Annotated[int | None, Field(ge=1, le=MAX_CHOICES, description="choices per prompt (each one job)")] = None
    stop: str | Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=16)] | None = None
    seed: Annotated[int | None, Field(ge=-(2**63), le=2**63 - 1)] = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: Annotated[str | None, Field(max_length=256, description="recorded nowhere; accepted for compatibility")] = None
    presence_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    frequency_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]] | None, Field(max_length=1024)] = None
    # vLLM extensions
    top_k: Annotated[int | None, Field(ge=-1, le=100_000, description="-1 or 0: disabled")] = None
    min_p: Annotated[float | None, Field(ge=0, le=1)] = None
    repetition_penalty: Annotated[float | None, Field(gt=0, le=10)] = None
    length_penalty: Annotated[float | None, Field(ge=-10, le=10, description="beam search: the score is the "
                                                  "cumulative logprob / length ** length_penalty")] = None
    ignore_eos: bool | None = None
    min_tokens: Annotated[int | None, Field(ge=0, le=1_000_000, description="at most max_tokens (400 otherwise)")] = None
    stop_token_ids: Annotated[list[TokenId] | None, Field(max_length=1024)] = None
    use_beam_search: Annotated[bool | None, Field(description="vLLM's beam search, of width n (the vllm backend)")] = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: Annotated[bool | None, only(True)]
    allowed_token_ids: Annotated[list[TokenId] | None, Field(min_length=1, max_length=100_000)] = None
    bad_words: Annotated[list[str] | None, only(maxItems=0)]
    prompt_logprobs: Annotated[int | None, Field(ge=-1, le=1_000_000, description="-1: the whole vocabulary")] = None
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None
    truncate_prompt_tokens: Annotated[int | None, Field(ge=-1, le=1_000_000)] = None
    truncation_side: Literal["left", "right"] | None = None
    structured_outputs: StructuredOutputs | None = None
    response_format: ResponseFormat | None = None
    priority: Annotated[int | None, Field(ge=-1000, le=1000, description="vLLM's meaning: lower runs first")] = None
    request_id: Annotated[str | None, Field(max_length=256, description="accepted; the job id names the request")] = None
    # llmsup extensions
    deadline_s: Annotated[PositiveSeconds | None, Field(description="llmsup: run-time limit in seconds")] = None
    timeout: Annotated[PositiveSeconds | None, Field(description="llmsup: alias of deadline_s")] = None
    queue_timeout_s: Annotated[PositiveSeconds | None, Field(description="llmsup: longest wait in the queue")] = None

    @model_validator(mode="after")
    def _check(self) -> "SamplingRequest":
        for name, (ok, allowed) in NEUTRAL.items():
            value = getattr(self, name, None)
            if value is not None and not ok(value):
                raise ValueError(f"{name}={value!r} is not supported by llmsup (only {allowed})")
        if {"deadline_s", "timeout"} <= self.model_fields_set:
            raise ValueError("give deadline_s or timeout, not both")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options can only be given with stream=true")
        if self.structured_outputs is not None and self.response_format is not None and \
                self.response_format.type != "text":
            raise ValueError("give structured_outputs or a response_format, not both")
        for key in self.logit_bias or {}:
            digits = key[1:] if key.startswith("-") else key
            if not (digits.isascii() and digits.isdigit()):  # "²".isdigit() is True, int("²") fails
                raise ValueError(f"logit_bias keys are token ids, not {key[:40]!r}")
        return self

    @property
    def deadline(self) -> float | None:
        return self.deadline_s if self.deadline_s is not None else self.timeout

    @property
    def choices_per_prompt(self) -> int:
        return self.n or 1

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def sample_logprobs(self) -> int | None:
        """Top alternatives per generated token (None: no logprobs)."""
        raise NotImplementedError


PromptIds = Annotated[list[TokenId], Field(min_length=1, max_length=1_000_000)]


class CompletionRequest(SamplingRequest):
    prompt: Annotated[str, Field(min_length=1)] | Annotated[
        list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_CHOICES)
    ] | PromptIds | Annotated[list[PromptIds], Field(min_length=1, max_length=MAX_CHOICES)] = Field(
        description="a prompt, a list of prompts, token ids, or a list of token-id prompts"
    )
    max_tokens: Annotated[int | None, Field(ge=1, le=1_000_000, description="default 16 (as OpenAI and vLLM); "
                                            "null: the rest of the context")] = 16
    echo: bool | None = None
    suffix: Annotated[str | None, only("")]
    best_of: Annotated[int | None, only(1)]
    logprobs: Annotated[int | None, Field(ge=0, le=1000)] = None
    add_special_tokens: bool | None = None

    @model_validator(mode="after")
    def _count(self) -> "CompletionRequest":
        if len(self.prompts()) * self.choices_per_prompt > MAX_CHOICES:
            raise ValueError(f"n x prompts must be at most {MAX_CHOICES}")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]
        return list(p)  # type: ignore[arg-type]

    def sample_logprobs(self) -> int | None:
        return self.logprobs


class TextPart(Lenient):
    type: Literal["text", "input_text"]
    text: str


class ImageURL(Lenient):
    url: Annotated[str, Field(max_length=20_000_000)]
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Lenient):
    """An image (``image_url``: a data URL, an http(s) URL or a file URL); only a multimodal model takes one."""

    type: Literal["image_url", "input_image"]
    image_url: ImageURL | str | None = None


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCallIn(Lenient):
    name: Annotated[str, Field(max_length=256)]
    arguments: str | dict[str, Any] | None = None


class ToolCallIn(Lenient):
    """A tool call of an earlier assistant turn (its ``arguments``: a JSON string, as OpenAI sends them)."""

    id: Annotated[str | None, Field(max_length=256)] = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(Lenient):
    """A chat message. Any role is taken (vLLM passes custom roles to the template); an assistant turn may carry
    its ``tool_calls`` and ``reasoning`` (or ``reasoning_content``), a tool turn its ``tool_call_id``."""

    role: Annotated[str, Field(min_length=1, max_length=64)]
    content: str | list[ContentPart] | None = None
    name: Annotated[str | None, Field(max_length=256)] = None
    tool_calls: Annotated[list[ToolCallIn] | None, Field(max_length=128)] = None
    tool_call_id: Annotated[str | None, Field(max_length=256)] = None
    reasoning: str | None = None
    reasoning_content: str | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(self.parts())

    def parts(self) -> list[str]:
        """The texts of its text parts."""
        if self.content is None:
            return []
        if isinstance(self.content, str):
            return [self.content]
        return [part.text for part in self.content if isinstance(part, TextPart)]

    def images(self) -> int:
        return sum(isinstance(p, ImagePart) for p in self.content) if isinstance(self.content, list) else 0

    @property
    def reasoning_text(self) -> str | None:
        return self.reasoning if self.reasoning is not None else self.reasoning_content

    def plain_tool_calls(self) -> list[dict[str, Any]]:
        return [c.model_dump(exclude_none=True) for c in self.tool_calls or ()]


class FunctionDef(Lenient):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    description: Annotated[str | None, Field(max_length=100_000)] = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(Lenient):
    name: Annotated[str, Field(min_length=1, max_length=256)]


class NamedToolChoice(Lenient):
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatCompletionRequest(SamplingRequest):
    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra={"allOf": [
        {"not": {"required": ["deadline_s", "timeout"]}}, {"not": {"required": ["max_tokens", "max_completion_tokens"]}},
    ]})

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1000)]
    max_completion_tokens: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int | None, Field(ge=-1, le=1_000_000, description="-1: the whole vocabulary")] = None
    tools: Annotated[list[ToolDef] | None, Field(max_length=1024)] = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    include_reasoning: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool | None = None
    chat_template: Annotated[str | None, Field(max_length=200_000, description="this request's own template "
                                               "(only where the server trusts request templates)")] = None
    chat_template_kwargs: Annotated[dict[str, Any] | None, Field(max_length=64)] = None
    echo: bool | None = None
    add_special_tokens: bool | None = Field(None, description="default false: the chat template places them")

    @model_validator(mode="after")
    def _tokens(self) -> "ChatCompletionRequest":
        if {"max_tokens", "max_completion_tokens"} <= self.model_fields_set:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        if self.continue_final_message and self.add_generation_prompt and "add_generation_prompt" in self.model_fields_set:
            raise ValueError("Cannot set both continue_final_message and add_generation_prompt to true")
        self._check_tools()
        return self

    def _check_tools(self) -> None:
        """vLLM's checks of ``tools`` and ``tool_choice`` (its messages); tools without a choice mean "auto"."""
        if self.tools == []:
            raise ValueError("`tools` must not be an empty array. Either provide at least one tool or omit the "
                             "field entirely.")
        if self.tool_choice is None:
            self.tool_choice = "auto" if self.tools else None
            return
        if self.tool_choice == "none":
            return
        if not self.tools:
            raise ValueError("When using `tool_choice`, `tools` must be set.")
        if isinstance(self.tool_choice, NamedToolChoice) and \
                self.tool_choice.function.name not in {t.function.name for t in self.tools}:
            raise ValueError("The tool specified in `tool_choice` does not match any of the specified `tools`")

    @property
    def named_tool(self) -> str | None:
        return self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        """The tools as the chat template receives them."""
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None

    def sample_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None
