"""What happens next in a pipeline, decided from its record and its steps' jobs: pure, time passed in.

:func:`advance` refreshes each step from its jobs, ends the pipeline when a step failed, timed out or was cancelled
(or its own deadline passed: running steps are cancelled, waiting ones skipped), and says which jobs to start: a
step whose ``after`` steps all succeeded, a map's next items up to its ``map_concurrency``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from llmsup.supervisor.core.jobs import Job, JobStatus
from llmsup.supervisor.pipelines.records import Pipeline, PipelineStatus, StepRecord, StepStatus
from llmsup.supervisor.pipelines.spec import StepSpec, item_text, render

STEP_OF_JOB = {JobStatus.FAILED: StepStatus.FAILED, JobStatus.EXPIRED: StepStatus.FAILED,
               JobStatus.TIMED_OUT: StepStatus.TIMED_OUT, JobStatus.CANCELLED: StepStatus.CANCELLED}
PIPELINE_OF_STEP = {StepStatus.FAILED: PipelineStatus.FAILED, StepStatus.TIMED_OUT: PipelineStatus.TIMED_OUT,
                    StepStatus.CANCELLED: PipelineStatus.CANCELLED}


@dataclass(frozen=True)
class Start:
    """Queue one job: a plain step (index 0) or one item of a map."""

    step: str
    index: int
    prompt: str
    deadline_s: float | None  # the step's own deadline, at most what is left of the pipeline's
    affinity: dict[str, Any] | None = None  # where the step named in ``affinity`` ran (its engine record)


@dataclass(frozen=True)
class Advance:
    pipeline: Pipeline
    starts: tuple[Start, ...] = ()
    cancels: tuple[str, ...] = ()  # job ids to cancel (the pipeline ended under them)

    @property
    def changed(self) -> bool:
        return bool(self.starts or self.cancels)


def deadline_at(p: Pipeline) -> float | None:
    return None if p.spec.deadline_s is None else p.created_at + p.spec.deadline_s


def advance(p: Pipeline, jobs: Mapping[str, Job], now: float) -> Advance:
    """The pipeline after what its jobs did, and the jobs to start or cancel (``now``: wall clock)."""
    if p.status.terminal:
        return Advance(p)
    p = replace(p, steps=tuple(_refresh(p, rec, jobs) for rec in p.steps))
    broken = next((s for s in p.steps if s.status in PIPELINE_OF_STEP), None)
    if broken is not None:
        return end(p, jobs, PIPELINE_OF_STEP[broken.status], f"step {broken.name!r} {broken.status.value}", now)
    due = deadline_at(p)
    if due is not None and now >= due:
        return end(p, jobs, PipelineStatus.TIMED_OUT, f"pipeline deadline of {p.spec.deadline_s}s passed", now)
    starts: list[Start] = []
    for rec in p.steps:
        spec = p.spec.get(rec.name)
        if rec.status is StepStatus.WAITING and all(p.step(a).status is StepStatus.SUCCEEDED for a in spec.after):
            rec = _expand(p, spec, rec)
            if rec.status is StepStatus.FAILED:  # its map source was not a list
                p = p.with_step(rec)
                return end(p, jobs, PipelineStatus.FAILED, f"step {rec.name!r} failed: {rec.error}", now)
            rec = replace(rec, status=StepStatus.QUEUED)
            p = p.with_step(rec)
        if rec.status in (StepStatus.QUEUED, StepStatus.RUNNING):
            starts += _next_items(p, spec, rec, jobs, now)
    if all(s.status is StepStatus.SUCCEEDED for s in p.steps):
        return Advance(replace(p, status=PipelineStatus.SUCCEEDED, finished_at=now))
    started = any(s.status in (StepStatus.RUNNING, StepStatus.SUCCEEDED) for s in p.steps)
    return Advance(replace(p, status=PipelineStatus.RUNNING if started else PipelineStatus.QUEUED), tuple(starts))


def view(p: Pipeline, jobs: Mapping[str, Job]) -> Pipeline:
    """The pipeline as its jobs stand now (a step whose job started reads ``running``), deciding nothing."""
    if p.status.terminal:
        return p
    p = replace(p, steps=tuple(_refresh(p, rec, jobs) for rec in p.steps))
    started = any(s.status in (StepStatus.RUNNING, StepStatus.SUCCEEDED) for s in p.steps)
    return replace(p, status=PipelineStatus.RUNNING if started else p.status)


def end(p: Pipeline, jobs: Mapping[str, Job], status: PipelineStatus, why: str, now: float) -> Advance:
    """End the pipeline: jobs still queued or running are cancelled, steps that never started are skipped."""
    cancels: list[str] = []
    steps = []
    for rec in p.steps:
        if rec.status is StepStatus.WAITING:
            rec = replace(rec, status=StepStatus.SKIPPED)
        elif not rec.status.terminal:
            live = [j for j in rec.job_ids if j not in jobs or not jobs[j].status.terminal]
            cancels += live
            rec = replace(rec, status=StepStatus.CANCELLED if rec.job_ids else StepStatus.SKIPPED,
                          error=f"pipeline ended: {why}")
        steps.append(rec)
    return Advance(replace(p, steps=tuple(steps), status=status, error=why, finished_at=now), cancels=tuple(cancels))


def _refresh(p: Pipeline, rec: StepRecord, jobs: Mapping[str, Job]) -> StepRecord:
    if rec.status.terminal or not rec.job_ids:
        return rec
    mine = [jobs[j] for j in rec.job_ids if j in jobs]
    ran = [j for j in mine if j.engine is not None]
    engine = ran[-1].engine.__dict__ if ran and ran[-1].engine is not None else rec.engine
    rec = replace(rec, engine=engine, placement=_placement(p, rec, engine))
    bad = next((j for j in mine if j.status in STEP_OF_JOB), None)
    if bad is not None:
        return replace(rec, status=STEP_OF_JOB[bad.status], error=f"job {bad.id} {bad.status.value}: {bad.error}")
    items = len(rec.items) if rec.items is not None else 1
    if len(mine) == items and all(j.status is JobStatus.SUCCEEDED for j in mine):
        return replace(rec, status=StepStatus.SUCCEEDED, outputs=tuple(j.output for j in mine))
    begun = any(j.status in (JobStatus.RUNNING, JobStatus.SUCCEEDED) for j in mine)
    return replace(rec, status=StepStatus.RUNNING if begun else StepStatus.QUEUED)


def _placement(p: Pipeline, rec: StepRecord, engine: dict[str, Any] | None) -> str | None:
    target_step = p.spec.get(rec.name).affinity
    if target_step is None or engine is None:
        return None
    target = p.step(target_step).engine or {}
    if target.get("id") == engine.get("id"):
        return "engine"
    return "host" if target.get("host") == engine.get("host") else "anywhere"


def _expand(p: Pipeline, spec: StepSpec, rec: StepRecord) -> StepRecord:
    """A map step's items, once the step it reads them from has succeeded."""
    if spec.map is None:
        return rec
    if not isinstance(spec.map, str):
        return replace(rec, items=tuple(spec.map))
    source = p.step(spec.map_source or "").output
    try:
        items = json.loads(source)
    except ValueError:
        items = None
    if not isinstance(items, list) or not items:
        return replace(rec, status=StepStatus.FAILED,
                       error=f"map source {spec.map_source!r} did not give a non-empty JSON list: {source[:200]!r}")
    return replace(rec, items=tuple(item_text(i) for i in items))


def _next_items(p: Pipeline, spec: StepSpec, rec: StepRecord, jobs: Mapping[str, Job], now: float) -> list[Start]:
    total = len(rec.items) if rec.items is not None else 1
    if len(rec.job_ids) >= total:
        return []
    in_flight = sum(1 for j in rec.job_ids if j in jobs and not jobs[j].status.terminal)
    room = total - len(rec.job_ids) if spec.map_concurrency is None else spec.map_concurrency - in_flight
    outputs = {s.name: s.output for s in p.steps if s.status is StepStatus.SUCCEEDED}
    due = deadline_at(p)
    left = None if due is None else max(0.001, due - now)
    deadline = spec.deadline_s if left is None else min(spec.deadline_s or left, left)
    affinity = p.step(spec.affinity).engine if spec.affinity else None
    starts = []
    for index in range(len(rec.job_ids), min(total, len(rec.job_ids) + max(0, room))):
        item = rec.items[index] if rec.items is not None else None
        starts.append(Start(rec.name, index, render(spec.prompt, outputs, item), deadline, affinity))
    return starts
