"""A pipeline's record: immutable, replaced whole when anything in it changes (as a job's is)."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

from llmsup.supervisor.pipelines.spec import PipelineSpec


class PipelineStatus(str, Enum):
    QUEUED = "queued"  # no step's job has started yet
    RUNNING = "running"  # at least one step's job started, none failed
    SUCCEEDED = "succeeded"  # every step succeeded
    FAILED = "failed"  # a step failed (its job failed or expired, or its map source was not a list)
    TIMED_OUT = "timed_out"  # a step timed out, or the pipeline's own deadline passed
    CANCELLED = "cancelled"  # cancelled by its owner (or a step's job was cancelled)

    @property
    def terminal(self) -> bool:
        return self not in (PipelineStatus.QUEUED, PipelineStatus.RUNNING)


class StepStatus(str, Enum):
    WAITING = "waiting"  # a step it runs after has not succeeded yet
    QUEUED = "queued"  # its job (or every job of its map) is queued
    RUNNING = "running"  # a job of it is running
    SUCCEEDED = "succeeded"  # its job (or every job of its map) succeeded
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # never ran: the pipeline ended first

    @property
    def terminal(self) -> bool:
        return self not in (StepStatus.WAITING, StepStatus.QUEUED, StepStatus.RUNNING)


@dataclass(frozen=True)
class StepRecord:
    name: str
    status: StepStatus = StepStatus.WAITING
    job_ids: tuple[str, ...] = ()  # one per map item (one for a plain step), in item order
    items: tuple[str, ...] | None = None  # a map step's items, rendered (None: not a map step, or not expanded yet)
    outputs: tuple[str, ...] = ()  # each job's output, in item order, once the step succeeded
    error: str | None = None
    engine: dict[str, Any] | None = None  # where its (last) job ran
    placement: str | None = None  # affinity steps: "engine", "host" or "anywhere" (where it ran against its target)

    @property
    def output(self) -> str:
        """What ``{{name}}`` stands for: the text of a plain step, the JSON list of a map step's outputs."""
        if self.items is None:
            return self.outputs[0] if self.outputs else ""
        import json

        return json.dumps(list(self.outputs))


def new_pipeline_id() -> str:
    return "pipe-" + uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class Pipeline:
    spec: PipelineSpec
    owner: str | None = None
    idempotency_key: str | None = None
    id: str = field(default_factory=new_pipeline_id)
    status: PipelineStatus = PipelineStatus.QUEUED
    steps: tuple[StepRecord, ...] = ()
    error: str | None = None
    created_at: float = 0.0  # wall clock
    finished_at: float | None = None

    def step(self, name: str) -> StepRecord:
        return next(s for s in self.steps if s.name == name)

    def with_step(self, record: StepRecord) -> "Pipeline":
        return replace(self, steps=tuple(record if s.name == record.name else s for s in self.steps))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spec"] = self.spec.to_dict()
        data["status"] = self.status.value
        for step in data["steps"]:
            step["status"] = step["status"].value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Pipeline":
        data = dict(data)
        data["spec"] = PipelineSpec.from_dict(data["spec"])
        data["status"] = PipelineStatus(data["status"])
        steps = []
        for raw in data.get("steps") or ():
            raw = dict(raw)
            raw["status"] = StepStatus(raw["status"])
            raw["job_ids"] = tuple(raw.get("job_ids") or ())
            raw["outputs"] = tuple(raw.get("outputs") or ())
            raw["items"] = tuple(raw["items"]) if raw.get("items") is not None else None
            steps.append(StepRecord(**raw))
        data["steps"] = tuple(steps)
        return cls(**data)
