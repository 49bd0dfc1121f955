"""The pipelines' shell: submits and cancels their steps' jobs through the supervisor's job API, writes their
records, and publishes each change to the pipeline's subscribers. Decisions are :func:`plan.advance`'s.

Driven by three things: a job of a pipeline settling (:meth:`on_job_settled`), a pipeline's deadline
(:meth:`tick` at :meth:`next_deadline`), and requests (:meth:`create`, :meth:`cancel`). Steps' jobs carry an
idempotency key ``<pipeline>:<step>:<item>``, so a step submitted again after a supervisor restart finds the job it
already made: no step runs twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from llmsup.supervisor.core.events import EventHub
from llmsup.supervisor.core.jobs import Job
from llmsup.supervisor.core.requests import JobNotFound, JobRequest, Submitted, SupervisorError
from llmsup.supervisor.pipelines.plan import Advance, advance, deadline_at, end, view
from llmsup.supervisor.pipelines.records import Pipeline, PipelineStatus, StepRecord
from llmsup.supervisor.pipelines.spec import PipelineSpec
from llmsup.supervisor.pipelines.store import DuplicatePipeline, PipelineStore

log = logging.getLogger("llmsup.pipelines")


class PipelineNotFound(KeyError):
    def __init__(self, pipeline_id: str) -> None:
        super().__init__(f"no pipeline {pipeline_id!r}")
        self.pipeline_id = pipeline_id


class JobPort(Protocol):
    """What the runner uses of the supervisor."""

    def submit(self, req: JobRequest) -> Submitted: ...

    def get(self, job_id: str) -> Job: ...

    def cancel(self, job_id: str, note: str = ...) -> Job: ...


class PipelineRunner:
    def __init__(self, jobs: JobPort, store: PipelineStore, wake: Callable[[], None] = lambda: None) -> None:
        self.jobs = jobs
        self.store = store
        self.hub = EventHub()  # pipeline id -> subscribers of its changes
        self._wake = wake  # a deadline earlier than the timer's next wake-up may have been added
        self._active: dict[str, Pipeline] = {}
        self._of_job: dict[str, str] = {}  # job id -> pipeline id, for active pipelines

    # requests ---------------------------------------------------------------------------------------------
    def create(self, spec: PipelineSpec, owner: str | None, idempotency_key: str | None,
               now: float) -> tuple[Pipeline, bool]:
        """A new pipeline, its first steps queued; a repeated idempotency key returns the one it made."""
        p = Pipeline(spec, owner, idempotency_key, created_at=now)
        p = replace(p, steps=tuple(StepRecord(name) for name in spec.names()))
        try:
            p = self.store.add(p)
        except DuplicatePipeline as dup:
            return self.get(dup.existing.id), False
        log.info("pipeline=%s created: %d steps, owner %s", p.id, len(spec.steps), owner or "-")
        self._active[p.id] = p
        self._step(p, now)
        self._wake()
        return self.get(p.id), True

    def get(self, pipeline_id: str) -> Pipeline:
        """The pipeline as it stands now: an active one's steps read from their jobs (``running`` once a job runs)."""
        active = self._active.get(pipeline_id)
        if active is not None:
            return view(active, self._jobs_of(active))
        p = self.store.get(pipeline_id)
        if p is None:
            raise PipelineNotFound(pipeline_id)
        return p

    def recent(self, owner: str | None, limit: int) -> list[Pipeline]:
        return self.store.recent(owner, limit)

    def cancel(self, pipeline_id: str, now: float, note: str = "cancelled by user") -> Pipeline:
        p = self._active.get(pipeline_id)
        if p is None:
            return self.get(pipeline_id)
        self._apply(end(p, self._jobs_of(p), PipelineStatus.CANCELLED, note, now), now)
        return self.get(pipeline_id)

    # what drives it -----------------------------------------------------------------------------------------
    def on_job_settled(self, job: Job, now: float) -> None:
        pipeline_id = self._of_job.get(job.id)
        if pipeline_id is not None and pipeline_id in self._active:
            self._step(self._active[pipeline_id], now)

    def next_deadline(self) -> float | None:
        dues = [d for d in (deadline_at(p) for p in self._active.values()) if d is not None]
        return min(dues, default=None)

    def tick(self, now: float) -> None:
        for p in list(self._active.values()):
            due = deadline_at(p)
            if due is not None and now >= due:
                self._step(p, now)

    def recover(self, now: float) -> None:
        """After a restart: every pipeline not ended goes on from its record and its jobs."""
        for p in self.store.active():
            self._active[p.id] = p
            for step in p.steps:
                self._of_job.update(dict.fromkeys(step.job_ids, p.id))
            log.warning("recovered pipeline=%s (%s)", p.id, p.status.value)
        for p in list(self._active.values()):
            self._step(p, now)

    # the shell ----------------------------------------------------------------------------------------------
    def _jobs_of(self, p: Pipeline) -> dict[str, Job]:
        jobs: dict[str, Job] = {}
        for step in p.steps:
            for job_id in step.job_ids:
                try:
                    jobs[job_id] = self.jobs.get(job_id)
                except JobNotFound:  # pruned by retention: it ended long ago; its step says what it was
                    continue
        return jobs

    def _step(self, p: Pipeline, now: float) -> None:
        for _ in range(len(p.steps) + 2):  # a start may find its job already ended (a replay after a restart)
            adv = advance(p, self._jobs_of(p), now)
            p = self._apply(adv, now)
            if not adv.starts:
                return

    def _apply(self, adv: Advance, now: float) -> Pipeline:
        p = adv.pipeline
        for start in adv.starts:
            spec = p.spec.get(start.step)
            params = {k: v for k, v in spec.params.items() if k != "stop"}
            req = JobRequest(prompt=start.prompt, max_tokens=spec.max_tokens, temperature=spec.temperature,
                             stop=tuple(spec.params.get("stop") or ()), deadline_s=start.deadline_s,
                             priority=p.spec.priority, idempotency_key=f"{p.id}:{start.step}:{start.index}",
                             owner=p.owner, extra=params, pipeline=p.id, affinity=start.affinity)
            try:
                job = self.jobs.submit(req).job
            except SupervisorError as exc:  # refused (queue full, invalid): the step and its pipeline fail, saying why
                log.warning("pipeline=%s step %s: job refused: %s", p.id, start.step, exc)
                p = self._store(p)
                return self._apply(end(p, self._jobs_of(p), PipelineStatus.FAILED,
                                       f"step {start.step!r}: job refused: {exc}", now), now)
            rec = p.step(start.step)
            p = p.with_step(replace(rec, job_ids=rec.job_ids + (job.id,)))
            self._of_job[job.id] = p.id
        p = self._store(p)
        for job_id in adv.cancels:
            try:
                self.jobs.cancel(job_id, f"pipeline {p.id} ended: {p.error}")
            except JobNotFound:
                continue
        return p

    def _store(self, p: Pipeline) -> Pipeline:
        """Written before it is published; an ended pipeline leaves the active set."""
        self.store.put(p)
        if p.status.terminal:
            self._active.pop(p.id, None)
            for step in p.steps:
                for job_id in step.job_ids:
                    self._of_job.pop(job_id, None)
            log.info("pipeline=%s %s%s", p.id, p.status.value, f": {p.error}" if p.error else "")
        else:
            self._active[p.id] = p
        self.hub.publish(p.id, {"type": "pipeline", "pipeline": p.to_dict()})
        return p

