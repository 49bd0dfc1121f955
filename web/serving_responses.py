"""``POST /v1/responses``, text in and text out: the request becomes a chat request (``instructions`` a system
message, ``input`` a user message or a list of messages), answered by the chat serving as one job, and the
answer is returned as a Responses object (``output``: one assistant message of ``output_text``; ``status``
``incomplete`` with ``incomplete_details.reason: max_output_tokens`` when the length ran out). Not streamed, no
tools, no stored state (``previous_response_id``): those are 400s that say so.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import Field, ValidationError

from llmsup.web.auth import PrincipalDep
from llmsup.web.deps import SupervisorDep
from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.openai_responses import ChatCompletionResponse, OpenAIError
from llmsup.web.openai_schemas import ChatCompletionRequest, Lenient, PositiveSeconds
from llmsup.web.serving_chat import ChatServing

router = APIRouter(prefix="/v1", tags=["openai"])


class InputText(Lenient):
    type: Literal["input_text", "output_text", "text"]
    text: str


class InputMessage(Lenient):
    type: Literal["message"] | None = None
    role: Annotated[str, Field(min_length=1, max_length=64)]
    content: str | list[InputText]


class ResponsesRequest(Lenient):
    model: Annotated[str | None, Field(max_length=256)] = None
    input: Annotated[str, Field(min_length=1)] | Annotated[list[InputMessage], Field(min_length=1, max_length=1000)]
    instructions: str | None = None
    max_output_tokens: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    stream: Literal[False] | None = Field(None, description="streamed responses are not served")
    tools: Annotated[list[dict[str, Any]] | None, Field(max_length=0)] = None
    previous_response_id: Literal[None] = Field(None, description="no stored responses")
    request_id: Annotated[str | None, Field(max_length=256)] = None
    seed: Annotated[int | None, Field(ge=-(2**63), le=2**64 - 1)] = None
    ignore_eos: bool | None = None
    deadline_s: Annotated[PositiveSeconds | None, Field(description="llmsup: run-time limit in seconds")] = None

    def chat(self) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            messages.append({"role": "user", "content": self.input})
        else:
            messages += [{"role": m.role, "content": m.content if isinstance(m.content, str) else
                          "".join(p.text for p in m.content)} for m in self.input]
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_output_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "request_id": self.request_id,
                "seed": self.seed, "ignore_eos": self.ignore_eos, "deadline_s": self.deadline_s}
        return {k: v for k, v in body.items() if v is not None}


@router.post("/responses", responses={code: {"model": OpenAIError, "description": "OpenAI-style error"}
                                      for code in (400, 401, 403, 404, 413, 429, 500)})
async def create_response(body: ResponsesRequest, request: Request, sup: SupervisorDep, principal: PrincipalDep,
                          response: Response) -> dict[str, Any]:
    try:
        chat_body = ChatCompletionRequest.model_validate(body.chat())
    except ValidationError as exc:
        raise OpenAIHTTPError(400, str(exc.errors()[0].get("msg", exc))) from None
    answer = await ChatServing(sup, principal).create(chat_body, request, response)
    assert isinstance(answer, ChatCompletionResponse)  # not streamed
    choice = answer.choices[0]
    text = choice.message.content or ""
    incomplete = choice.finish_reason == "length"
    rid = "resp_" + answer.id.split("-", 1)[-1]
    usage = answer.usage
    return {
        "id": rid, "object": "response", "created_at": int(time.time()), "model": answer.model,
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "temperature": body.temperature, "top_p": body.top_p, "parallel_tool_calls": True, "tool_choice": "auto",
        "tools": [], "error": None,
        "output": [{"type": "message", "id": "msg_" + rid[5:], "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}],
        "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
                  "total_tokens": usage.total_tokens, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": 0}} if usage else None,
        "llmsup": answer.llmsup.model_dump() if answer.llmsup else None,
    }
