"""Request and response schemas of the REST API (requests forbid unknown fields)."""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from llmsup.supervisor.core.jobs import Job, JobStatus


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z") if ts else None


def _is_int_field(annotation: Any) -> bool:
    args = typing.get_args(annotation) or (annotation,)
    return int in args and float not in args and bool not in args


class JSONModel(BaseModel):
    """A request body checked as JSON Schema would: strict types (no "3" for 3, no true for 1), unknown fields
    refused, and an integral number such as ``3.0`` taken as the integer it is (JSON has one number type)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fixed = dict(data)
        for name, field in cls.model_fields.items():
            value = fixed.get(name)
            if isinstance(value, float) and value.is_integer() and _is_int_field(field.annotation):
                fixed[name] = int(value)
        return fixed


class JobCreate(JSONModel):
    prompt: Annotated[str, Field(min_length=1, description="text to complete")]
    max_tokens: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    temperature: Annotated[float, Field(ge=0, le=5)] = 0.0
    stop: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]] | None, Field(max_length=16)] = None
    deadline_s: Annotated[float | None, Field(gt=0, le=86_400, description="run-time limit in seconds")] = None
    queue_timeout_s: Annotated[float | None, Field(gt=0, le=86_400)] = None
    priority: Annotated[int, Field(ge=-1000, le=1000, description="higher runs first")] = 0
    pool: Annotated[str | None, Field(min_length=1, max_length=200, description="the engine pool to run in (a "
                                      "pool's name or its model's served name); unset: the first pool")] = None
    idempotency_key: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    top_k: Annotated[int | None, Field(ge=0, le=100_000)] = None
    seed: Annotated[int | None, Field(ge=0, le=2**53 - 1)] = None
    ignore_eos: bool | None = None
    min_tokens: Annotated[int | None, Field(ge=0, le=1_000_000, description="at most max_tokens (422 otherwise)")] = None


class EngineRefOut(BaseModel):
    id: int
    host: str
    pid: int
    gpu: str


class JobOut(BaseModel):
    id: str
    status: JobStatus
    prompt: str
    output: str
    tokens: int
    attempts: int
    error: str | None
    finish_reason: str | None
    engine: EngineRefOut | None
    priority: int
    deadline_s: float | None  # None: no deadline (an OpenAI request the user did not bound)
    queue_timeout_s: float
    idempotency_key: str | None
    owner: str | None = None
    prompt_tokens: int = 0
    pipeline: str | None = Field(None, description="the pipeline this job is a step of")
    pool: str = Field("default", description="the engine pool it runs in")
    params: dict[str, Any]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    error_detail: str | None = Field(
        None, description="admins only: the engine-side traceback of a failed job (absent for other callers)"
    )

    # no return annotation on purpose: pydantic would take it as this model's serialized schema (OpenAPI)
    @model_serializer(mode="wrap")
    def _without_empty_detail(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        """``error_detail`` is left out, not null, where the caller may not see it."""
        data = handler(self)
        if isinstance(data, dict) and data.get("error_detail") is None:
            data.pop("error_detail", None)
        return data

    @classmethod
    def of(cls, job: Job) -> "JobOut":
        return cls(
            id=job.id, status=job.status, prompt=job.prompt, output=job.output, tokens=job.tokens,
            attempts=job.attempts, error=job.error, finish_reason=job.finish_reason,
            engine=EngineRefOut(**job.engine.__dict__) if job.engine else None, priority=job.priority,
            deadline_s=job.deadline_s, queue_timeout_s=job.queue_timeout_s, idempotency_key=job.idempotency_key,
            owner=job.owner, prompt_tokens=job.prompt_tokens, pipeline=job.pipeline, pool=job.pool,
            params=_params(job),
            created_at=iso(job.created_at), started_at=iso(job.started_at), finished_at=iso(job.finished_at),
        )


def _params(job: Job) -> dict[str, Any]:
    """The job's parameters as JSON; its images (data URLs, up to megabytes each) by their size only."""
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in job.params.__dict__.items()}
    params["images"] = [f"<image: a data URL of {len(url)} characters>" for url in job.params.images]
    return params


class JobList(BaseModel):
    jobs: list[JobOut]
    count: int


class EngineJobOut(BaseModel):
    job_id: str
    running_s: float


class EngineOut(BaseModel):
    id: int
    host: str
    pid: int
    gpu: str
    state: str
    job_id: str | None
    jobs: list[EngineJobOut]
    slots: int
    jobs_done: int
    rss_mb: float
    gpu_mem_mb: float | None = None  # GPU memory of the engine and its children (None: a CPU engine)
    backend: str | None
    model: str | None
    engine_set: str
    restarts: int
    busy_s: float | None = None  # how long its current job has run
    deadline_s: float | None = None  # the current job's deadline
    uptime_s: float | None = None
    log_file: str | None = None  # the engine's own log file (vLLM's and transformers' lines too)
    pool: str = "default"  # the engine pool it serves


class StartingEngineOut(BaseModel):
    engine_set: str
    gpu: str


class EngineList(BaseModel):
    engines: list[EngineOut]
    starting: list[StartingEngineOut] = []  # launched (e.g. replacing a restarted engine), not registered yet


class HostOut(BaseModel):
    host: str  # its hostname, as its engines report it
    host_key: str  # hostname + boot id
    local: bool  # the server's own host
    agent: bool  # its engines come from a join agent (``llmsup join``)
    state: str  # up | lost | revoked
    gpus: int | None  # as its join agent reports them
    engines_wanted: int | None  # serving engines its join agent keeps
    standby_wanted: int | None
    silent_s: float | None  # since the last sign of life (an engine's or its agent's beat)
    losses: int  # times it was taken as lost
    lost_s: float | None  # how long it has been lost
    fenced: list[int]  # engines taken out while it was cut off, still to be replaced there
    engines: list[int]  # ids of the engines the supervisor holds on it
    engine_list: list[EngineOut] = []  # those engines, as /admin/engines shows them


class HostList(BaseModel):
    hosts: list[HostOut]


class HostRevokedOut(BaseModel):
    host: str
    host_key: str
    engines: list[int]  # engines taken out (their keys revoked)
    jobs: list[str]  # jobs that were running there: they run again elsewhere, not charged an attempt


class EngineActionOut(BaseModel):
    engine: int
    action: str  # interrupt | restart | drain | undrain
    jobs: list[str]  # jobs on the engine when asked (interrupted / killed by a restart)
    state: str | None = None
    # the names of the first version of these routes, kept
    interrupted: list[str] | None = None
    restarting: int | None = None
    draining: bool | None = None

    def model_post_init(self, _: Any) -> None:
        if self.action == "interrupt":
            self.interrupted = self.jobs
        elif self.action == "restart":
            self.restarting = self.engine
        else:
            self.draining = self.action == "drain"


class ErrorOut(BaseModel):
    error: str
    detail: Any = None


class Health(BaseModel):
    status: str
    engines: int = 0


ERROR_DESCRIPTIONS = {
    401: "missing or invalid token / API key",
    403: "wrong admin token, or a priority above max_user_priority without it",
    404: "not found (or not yours)",
    409: "not allowed in the job's current status (or an idempotency key that is taken)",
    413: "request body too large",
    422: "invalid request (message in `error`)",
    429: "queue full (or the caller's share of it), or too many open event streams: retry after `Retry-After` s",
    500: "the job failed on its engine",
    503: "not ready, or the job expired in the queue",
}


def errors(*codes: int, stream: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error codes, all answered with :class:`ErrorOut` as JSON.

    ``stream``: for routes whose own response is not JSON (FastAPI would file a ``model`` under the route's
    media type), the JSON content is spelled out.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[code]}
        if stream:
            entry = {"description": ERROR_DESCRIPTIONS[code],
                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
        if code == 429:
            entry["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
        out[code] = entry
    return out
