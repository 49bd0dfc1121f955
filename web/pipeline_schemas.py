"""Request and response bodies of ``/v1/pipelines`` (requests are checked strictly, as the jobs API's are)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

from llmsup.supervisor.pipelines.records import Pipeline, PipelineStatus, StepRecord, StepStatus
from llmsup.supervisor.pipelines.spec import MAX_MAP_ITEMS, MAX_STEPS, PipelineSpec, StepSpec, item_text
from llmsup.web.schemas import JSONModel

SAMPLING = ("top_p", "top_k", "seed", "stop")


class StepCreate(JSONModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$", description="unique in the pipeline")]
    prompt: Annotated[str, Field(min_length=1, description="{{a}}: step a's output; {{item}}: a map's item")]
    after: Annotated[list[str], Field(max_length=MAX_STEPS, description="steps that must succeed first")] = []
    pool: Annotated[str | None, Field(description="the engine pool (model) to run on")] = None
    affinity: Annotated[str | None, Field(description="run where this step (one of after) ran, when it has room")] = None
    map: Annotated[
        Annotated[list[Any], Field(min_length=1, max_length=MAX_MAP_ITEMS)]
        | Annotated[str, Field(pattern=r"^\{\{\s*[A-Za-z_][A-Za-z0-9_-]{0,63}\s*\}\}$")] | None,
        Field(description='items, or "{{a}}": step a\'s output as a JSON list'),
    ] = None
    map_concurrency: Annotated[int | None, Field(ge=1, le=MAX_MAP_ITEMS)] = None
    deadline_s: Annotated[float | None, Field(gt=0, le=86_400, description="each job's run-time limit")] = None
    max_tokens: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    temperature: Annotated[float, Field(ge=0, le=5)] = 0.0
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    top_k: Annotated[int | None, Field(ge=0, le=100_000)] = None
    seed: Annotated[int | None, Field(ge=0, le=2**53 - 1)] = None
    stop: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]] | None, Field(max_length=16)] = None

    def spec(self) -> StepSpec:
        params = {k: getattr(self, k) for k in SAMPLING if getattr(self, k) is not None}
        items = tuple(item_text(i) for i in self.map) if isinstance(self.map, list) else self.map
        return StepSpec(self.name, self.prompt, tuple(self.after), self.pool, self.affinity, items,
                        self.map_concurrency, self.deadline_s, self.max_tokens, self.temperature, params)


class PipelineCreate(JSONModel):
    steps: Annotated[list[StepCreate], Field(min_length=1, max_length=MAX_STEPS)]
    deadline_s: Annotated[float | None, Field(gt=0, le=7 * 86_400, description="bounds the whole pipeline")] = None
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    idempotency_key: Annotated[str | None, Field(min_length=1, max_length=200)] = None

    def spec(self) -> PipelineSpec:
        return PipelineSpec(tuple(s.spec() for s in self.steps), self.deadline_s, self.priority)


class StepOut(BaseModel):
    name: str
    status: StepStatus
    job_ids: list[str]
    output: str | None = Field(None, description="a plain step's text, a map step's JSON list, once it succeeded")
    outputs: list[str] = Field(description="each job's output in item order, once the step succeeded")
    items: int | None = Field(None, description="a map step's number of items, once known")
    error: str | None
    engine: dict[str, Any] | None
    placement: str | None = Field(None, description='affinity steps: "engine", "host" or "anywhere"')

    @classmethod
    def of(cls, rec: StepRecord) -> "StepOut":
        return cls(name=rec.name, status=rec.status, job_ids=list(rec.job_ids),
                   output=rec.output if rec.status is StepStatus.SUCCEEDED else None, outputs=list(rec.outputs),
                   items=None if rec.items is None else len(rec.items), error=rec.error, engine=rec.engine,
                   placement=rec.placement)


class PipelineOut(BaseModel):
    id: str
    status: PipelineStatus
    error: str | None
    owner: str | None
    deadline_s: float | None
    priority: int
    idempotency_key: str | None
    created_at: str | None
    finished_at: str | None
    steps: list[StepOut]

    @classmethod
    def of(cls, p: Pipeline) -> "PipelineOut":
        return cls(id=p.id, status=p.status, error=p.error, owner=p.owner, deadline_s=p.spec.deadline_s,
                   priority=p.spec.priority, idempotency_key=p.idempotency_key, created_at=_iso(p.created_at),
                   finished_at=_iso(p.finished_at), steps=[StepOut.of(s) for s in p.steps])


class PipelineList(BaseModel):
    pipelines: list[PipelineOut]


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()
