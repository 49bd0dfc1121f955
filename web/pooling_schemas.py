"""Request and response bodies of vLLM's pooling routes: ``/v1/embeddings``, ``/pooling``, ``/classify``,
``/score`` (``/v1/score``) and ``/rerank`` (``/v1/rerank``, ``/v2/rerank``), with vLLM's field names.

Each input (or, for scoring, each pair or text) is one llmsup job; ``deadline_s`` / ``timeout`` and
``queue_timeout_s`` are llmsup's, as on the other OpenAI routes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from llmsup.web.openai_responses import LlmsupInfo
from llmsup.web.openai_schemas import Lenient, PositiveSeconds, TokenId

MAX_INPUTS = 2048  # inputs of one request (each is one job)
Text = Annotated[str, Field(max_length=1_000_000)]
Ids = Annotated[list[TokenId], Field(min_length=1, max_length=1_000_000)]
PoolingInput = Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)] | Ids | Annotated[
    list[Ids], Field(min_length=1, max_length=MAX_INPUTS)]
ScoreSide = Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]


class PoolingBase(Lenient):
    model: Annotated[str | None, Field(max_length=256)] = None
    user: Annotated[str | None, Field(max_length=256)] = None
    truncate_prompt_tokens: Annotated[int | None, Field(ge=-1, le=1_000_000)] = None
    truncation_side: Literal["left", "right"] | None = None
    add_special_tokens: bool = True
    use_activation: bool | None = None
    request_id: Annotated[str | None, Field(max_length=256)] = None
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    deadline_s: Annotated[PositiveSeconds | None, Field(description="llmsup: run-time limit in seconds")] = None
    timeout: Annotated[PositiveSeconds | None, Field(description="llmsup: alias of deadline_s")] = None
    queue_timeout_s: Annotated[PositiveSeconds | None, Field(description="llmsup: longest wait in the queue")] = None

    @model_validator(mode="after")
    def _one_deadline(self) -> "PoolingBase":
        if {"deadline_s", "timeout"} <= self.model_fields_set:
            raise ValueError("give deadline_s or timeout, not both")
        return self

    @property
    def deadline(self) -> float | None:
        return self.deadline_s if self.deadline_s is not None else self.timeout


class Encoded(PoolingBase):
    input: PoolingInput
    encoding_format: Literal["float", "base64"] = "float"
    embed_dtype: Literal["float32", "float16"] = "float32"
    endianness: Literal["native", "big", "little"] = "native"
    dimensions: Annotated[int | None, Field(ge=-(2**31), le=2**31)] = None

    def inputs(self) -> list[str | list[int]]:
        """Each input: a text or a prompt of token ids."""
        raw = self.input
        if isinstance(raw, str):
            return [raw]
        if raw and all(isinstance(x, int) for x in raw):
            return [list(raw)]  # type: ignore[arg-type]  # one prompt of ids
        return list(raw)  # type: ignore[arg-type]  # texts, or prompts of ids


class EmbeddingRequest(Encoded):
    """OpenAI's embeddings body (``input``: a text, texts, token ids or lists of them), with vLLM's extras."""


class PoolingRequest(Encoded):
    task: Literal["embed", "classify", "token_embed", "token_classify"] | None = Field(
        None, description="the pooling task (default: the model's own)")


class ClassificationRequest(PoolingBase):
    input: PoolingInput

    def inputs(self) -> list[str | list[int]]:
        return EmbeddingRequest.inputs(self)  # type: ignore[arg-type]  # the same input forms


class ScoreRequest(PoolingBase):
    """vLLM's score body: ``queries`` and ``documents`` (or ``items``), ``text_1`` and ``text_2``, ``data_1`` and
    ``data_2``: one to one, one to many, or many to many of the same length."""

    queries: ScoreSide | None = None
    documents: ScoreSide | None = None
    items: ScoreSide | None = None
    text_1: ScoreSide | None = None
    text_2: ScoreSide | None = None
    data_1: ScoreSide | None = None
    data_2: ScoreSide | None = None

    def sides(self) -> tuple[list[str], list[str]]:
        for first, second in ((self.queries, self.documents), (self.queries, self.items), (self.text_1, self.text_2),
                              (self.data_1, self.data_2)):
            if first is not None and second is not None:
                return _listed(first), _listed(second)
        raise ValueError("give queries and documents (or items), text_1 and text_2, or data_1 and data_2")


class RerankRequest(PoolingBase):
    query: Text
    documents: Annotated[list[Text], Field(min_length=0, max_length=MAX_INPUTS)]
    top_n: Annotated[int, Field(ge=0, le=MAX_INPUTS)] = 0


def _listed(side: str | list[str]) -> list[str]:
    return [side] if isinstance(side, str) else list(side)


class PoolingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class EmbeddingData(BaseModel):
    index: int
    object: str = "embedding"
    embedding: list[float] | str


class PoolingData(BaseModel):
    index: int
    object: str = "pooling"
    data: Any


class ClassificationData(BaseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ScoreData(BaseModel):
    index: int
    object: str = "score"
    score: float


class ListResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[Any]
    usage: PoolingUsage
    llmsup: LlmsupInfo | None = None


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    document: RerankDocument
    relevance_score: float


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]
    llmsup: LlmsupInfo | None = None
