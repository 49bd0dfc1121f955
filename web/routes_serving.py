"""vLLM's serving routes beside the OpenAI ones: ``/health``, ``/version``, ``/load``, ``/tokenize``,
``/detokenize``, ``/tokenizer_info`` (same paths and bodies as ``vllm serve``).

``/tokenize`` and ``/detokenize`` use the served model's tokenizer, loaded in the web process
(``web/tokens.py``); ``/tokenize`` with ``messages`` renders them with the chat template first, as the chat
route does. The sim backend has no vocabulary: there they answer 400 saying so.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field, model_validator

from llmsup.supervisor import __version__
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.web.auth import PrincipalDep
from llmsup.web.chat import ChatInput, render_chat, template_for
from llmsup.web.deps import SupervisorDep
from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.metrics import metrics_access
from llmsup.web.openai_responses import OpenAIError
from llmsup.web.openai_schemas import ChatMessage, Lenient, ToolDef
from llmsup.web.tokens import HFTokenizer, NoVocabulary, Tokenizer, pool_for, served_model, tokenizer_for

router = APIRouter(tags=["vllm"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIError, "description": "OpenAI-style error"} for code in (400, 401, 413)}


class TokenizeRequest(Lenient):
    """vLLM's two forms in one body: ``prompt`` (completion) or ``messages`` (chat)."""

    model: Annotated[str | None, Field(max_length=256)] = None
    prompt: Annotated[str | None, Field(max_length=1_000_000)] = None
    messages: Annotated[list[ChatMessage] | None, Field(min_length=1, max_length=1000)] = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool | None = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: Annotated[list[ToolDef] | None, Field(max_length=1024)] = None

    @model_validator(mode="after")
    def _one(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give prompt or messages")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int | None
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(Lenient):
    model: Annotated[str | None, Field(max_length=256)] = None
    tokens: Annotated[list[Annotated[int, Field(ge=0, le=2**63 - 1)]], Field(max_length=1_000_000)]


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionOut(BaseModel):
    version: str = Field(description="the engines' vLLM version when they run vLLM (as vllm serve says), else llmsup's")
    llmsup_version: str


class LoadOut(BaseModel):
    server_load: int = Field(description="jobs queued or running")


@router.get("/health", response_class=Response, responses={200: {"description": "serving (empty body)"},
                                                            503: {"description": "no engine serves"}})
async def health(sup: SupervisorDep) -> Response:
    return Response(status_code=200 if sup.ready() else 503)


PING_ANSWERS: dict[int | str, dict[str, Any]] = {200: {"description": "serving (empty body)"},
                                                  503: {"description": "no engine serves"}}


@router.get("/ping", response_class=Response, responses=PING_ANSWERS)
async def ping(sup: SupervisorDep) -> Response:
    """vLLM's (and SageMaker's) liveness probe: the same answer as ``/health``, no key needed."""
    return Response(status_code=200 if sup.ready() else 503)


@router.post("/ping", response_class=Response, responses=PING_ANSWERS)
async def ping_post(sup: SupervisorDep) -> Response:
    return Response(status_code=200 if sup.ready() else 503)


@router.get("/version", response_model=VersionOut)
async def version(sup: SupervisorDep) -> VersionOut:
    model = served_model(sup)
    return VersionOut(version=(model.vllm_version if model else None) or __version__, llmsup_version=__version__)


@router.get("/load", response_model=LoadOut, dependencies=[Depends(metrics_access)], responses=ERRORS)
async def load(sup: SupervisorDep) -> LoadOut:
    return LoadOut(server_load=sup.count(JobStatus.QUEUED) + sup.count(JobStatus.RUNNING))


async def _tokenizer(sup: SupervisorDep, pool: str | None = None) -> Tokenizer:
    tok = await tokenizer_for(served_model(sup, pool))
    if tok is None:
        raise OpenAIHTTPError(400, "no tokenizer is available here (no engine serves yet, or the model's tokenizer "
                                   "cannot be loaded by the web process)", code="no_tokenizer")
    return tok


@router.post("/tokenize", response_model=TokenizeResponse, response_model_exclude_none=False, responses=ERRORS)
async def tokenize(body: TokenizeRequest, sup: SupervisorDep, principal: PrincipalDep) -> TokenizeResponse:
    limit = sup.settings.max_prompt_chars
    if len(body.prompt or "") > limit:
        raise OpenAIHTTPError(400, f"prompt longer than {limit} characters", param="prompt")
    pool = pool_for(sup, body.model)
    tok = await _tokenizer(sup, pool)
    if body.messages is not None:
        hf = tok.tok if isinstance(tok, HFTokenizer) else None
        text = await render_chat(template_for(sup, hf, pool), ChatInput(
            body.messages, body.add_generation_prompt, bool(body.continue_final_message),
            dict(body.chat_template_kwargs or {}), [t.model_dump(exclude_none=True) for t in body.tools or ()] or None))
        special = bool(body.add_special_tokens)  # chat: the template places the special tokens (vLLM's default)
    else:
        text = body.prompt or ""
        special = body.add_special_tokens is not False
    try:
        ids = tok.encode(text, special)
        strs = tok.token_strs(ids) if body.return_token_strs else None
    except NoVocabulary as exc:
        raise OpenAIHTTPError(400, str(exc), code="no_vocabulary") from None
    model = served_model(sup, pool)
    return TokenizeResponse(count=len(ids), max_model_len=model.max_model_len if model else None, tokens=ids,
                            token_strs=strs)


@router.get("/tokenizer_info", responses=ERRORS)
async def tokenizer_info(sup: SupervisorDep, principal: PrincipalDep) -> dict[str, Any]:
    """The served tokenizer's configuration (``tokenizer_class``, special tokens, chat template...)."""
    tok = await _tokenizer(sup)
    if not isinstance(tok, HFTokenizer):
        raise OpenAIHTTPError(400, "the sim backend has no tokenizer to describe", code="no_vocabulary")
    info = tok.info()
    model = served_model(sup)
    if model and model.max_model_len:
        info["model_max_length"] = max(int(info.get("model_max_length") or 0), model.max_model_len)
    return info


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS)
async def detokenize(body: DetokenizeRequest, sup: SupervisorDep, principal: PrincipalDep) -> DetokenizeResponse:
    if len(body.tokens) > sup.settings.max_prompt_chars:
        raise OpenAIHTTPError(400, f"more than {sup.settings.max_prompt_chars} tokens", param="tokens")
    tok = await _tokenizer(sup, pool_for(sup, body.model))
    try:
        return DetokenizeResponse(prompt=tok.decode(body.tokens))
    except NoVocabulary as exc:
        raise OpenAIHTTPError(400, str(exc), code="no_vocabulary") from None
    except ValueError as exc:
        raise OpenAIHTTPError(400, str(exc), param="tokens") from None
