"""The job record: immutable, replaced whole on every transition."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any

from llmsup.engines.messages import logprobs_from_plain
from llmsup.engines.protocol import GenParams, TokenLogprob


class JobStatus(str, Enum):
    QUEUED = "queued"  # waiting for an engine slot (also after an engine was lost)
    RUNNING = "running"  # dispatched to one engine; the watchdog holds its deadline
    SUCCEEDED = "succeeded"  # generation finished on its own (stop or max_tokens)
    FAILED = "failed"  # generation raised, or the job ran out of attempts
    TIMED_OUT = "timed_out"  # stopped at its deadline; partial output kept
    CANCELLED = "cancelled"  # cancelled by its owner or killed by an admin; partial output kept
    EXPIRED = "expired"  # waited in the queue past its queue timeout, never ran

    @property
    def terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


TERMINAL = frozenset(s for s in JobStatus if s.terminal)


@dataclass(frozen=True)
class EngineRef:
    """Where a job ran: enough to find the process and its device."""

    id: int
    host: str
    pid: int
    gpu: str

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "EngineRef | None":
        return cls(**data) if data else None


JobParams = GenParams  # sampling parameters: the same record the engines receive


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class Job:
    prompt: str
    params: JobParams = field(default_factory=JobParams)
    deadline_s: float | None = 60.0  # None: no deadline (an OpenAI request the user did not bound)
    queue_timeout_s: float = 600.0
    priority: int = 0
    idempotency_key: str | None = None
    owner: str | None = None
    id: str = field(default_factory=new_job_id)
    status: JobStatus = JobStatus.QUEUED
    attempts: int = 0
    engine: EngineRef | None = None
    output: str = ""
    tokens: int = 0
    prompt_tokens: int = 0  # as counted by the backend (0: unknown)
    finish_reason: str | None = None
    error: str | None = None
    error_detail: str | None = None  # engine-side traceback of a failure: shown to admins only
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    not_before: float = 0.0  # earliest dispatch time (retry backoff)
    lost_engines: tuple[int, ...] = ()  # engines this job was lost on: prefer others
    seq: int = 0  # insertion order, assigned by the store (FIFO within a priority)
    # what the engine sends back only when the job's params ask for it (logprobs, return_token_ids):
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # prompt tokens after the first
    token_ids: tuple[int, ...] = ()
    prompt_token_ids: tuple[int, ...] = ()
    pooled: tuple[float, ...] = ()  # a pooling job's output (an embedding, class probabilities...), flattened
    pooled_shape: tuple[int, ...] = ()  # its shape
    pipeline: str | None = None  # the pipeline this job is a step of
    affinity: EngineRef | None = None  # run on this engine when it has room, else on its host, else anywhere
    pool: str = "default"  # the engine pool it runs in

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    def to_json(self) -> str:
        """``json.dumps(self.to_dict())``, without ``asdict``'s deep copy (a tenth of the store's cost per job)."""
        return _ENCODER.encode(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Job":
        data = dict(data)
        data["status"] = JobStatus(data["status"])
        data["params"] = JobParams.from_dict(data.get("params") or {})
        data["engine"] = EngineRef.from_dict(data.get("engine"))
        data["affinity"] = EngineRef.from_dict(data.get("affinity"))
        data["lost_engines"] = tuple(data.get("lost_engines") or ())
        for name in ("logprobs", "prompt_logprobs"):
            data[name] = logprobs_from_plain(data.get(name) or [])
        for name in ("token_ids", "prompt_token_ids", "pooled", "pooled_shape"):
            data[name] = tuple(data.get(name) or ())
        return cls(**data)

    def with_changes(self, **changes: Any) -> "Job":
        return replace(self, **changes)


_FIELDS: dict[type, tuple[str, ...]] = {}


def _plain(value: object) -> object:
    """A nested record as the JSON encoder asks for it: its fields by name (in declaration order, as ``asdict``)."""
    cls = type(value)
    names = _FIELDS.get(cls)
    if names is None:
        if not hasattr(cls, "__dataclass_fields__"):
            raise TypeError(f"{cls.__name__} is not JSON serializable")
        names = _FIELDS[cls] = tuple(f.name for f in fields(value))  # type: ignore[arg-type]
    return {name: getattr(value, name) for name in names}


_ENCODER = json.JSONEncoder(default=_plain)  # a str Enum (the status) encodes as its value
