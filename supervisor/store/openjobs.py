"""The open jobs (queued and running) in memory, beside the store's records: the hot path's reads.

A store keeps this index in step with every write (``track`` after an insert or a replace) and answers from it
what the supervisor asks on every submit, dispatch and poll: a job by id, the number queued (and per owner),
and the next queued jobs in start order (priority, then the owner's fair turn of ``fairness.py``, then
arrival). None of these then costs a query, nor grows with the jobs in the
queue: a count is a counter, the next jobs come off a heap (entries of jobs that have moved on are dropped
when met, and the heaps are rebuilt when stale entries outnumber live ones).
"""

from __future__ import annotations

import heapq
from collections import Counter

from llmsup.supervisor.core.jobs import Job, JobStatus

Q, R = JobStatus.QUEUED, JobStatus.RUNNING
Entry = tuple[float, int, str]  # (not_before, seq, job id)
Ready = tuple[int, float, int, str]  # (-priority, turn, seq, job id)


class OpenJobs:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self._counts: Counter[JobStatus] = Counter()
        self._owned: Counter[tuple[str, JobStatus]] = Counter()
        self._turns: dict[str, float] = {}  # job id -> its fair turn, given at submission
        self._ready: list[Ready] = []  # queued and due (not_before passed)
        self._later: list[Entry] = []  # (not_before, seq, id): queued, maybe not due yet

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def count(self, status: JobStatus) -> int:
        return self._counts[status]

    def count_owned(self, status: JobStatus, owner: str) -> int:
        return self._owned[(owner, status)]

    def turn(self, job_id: str) -> float:
        return self._turns.get(job_id, 0.0)

    def track(self, job: Job, turn: float | None = None) -> None:
        """The job as just written (``turn``: the one it was given, when it is new): kept while queued or running,
        forgotten once terminal."""
        if turn is not None:
            self._turns[job.id] = turn
        old = self.jobs.get(job.id)
        if old is not None:
            self._counts[old.status] -= 1
            if old.owner is not None:
                self._owned[(old.owner, old.status)] -= 1
        if job.status.terminal:
            self.jobs.pop(job.id, None)
            self._turns.pop(job.id, None)
            return
        self.jobs[job.id] = job
        self._counts[job.status] += 1
        if job.owner is not None:
            self._owned[(job.owner, job.status)] += 1
        if job.status is Q and (old is None or old.status is not Q or old.not_before != job.not_before
                                or old.priority != job.priority):
            heapq.heappush(self._later, (job.not_before, job.seq, job.id))
            self._compact()

    def forget(self, job_id: str) -> None:
        """The record is gone (deleted): drop it here too."""
        job = self.jobs.get(job_id)
        if job is not None:
            self.track(job.with_changes(status=JobStatus.CANCELLED))

    def next_queued(self, now: float, limit: int) -> list[Job]:
        """Queued jobs due at ``now``, highest priority first, then by ``seq``; they stay queued here."""
        while self._later and self._later[0][0] <= now:
            _, seq, job_id = heapq.heappop(self._later)
            job = self.jobs.get(job_id)
            if job is not None and job.status is Q and job.not_before <= now:
                heapq.heappush(self._ready, (-job.priority, self.turn(job_id), seq, job_id))
        out: list[Job] = []
        kept: list[Ready] = []
        seen: set[str] = set()
        while self._ready and len(out) < limit:
            entry = heapq.heappop(self._ready)
            job = self.jobs.get(entry[3])
            if (job is None or job.status is not Q or job.id in seen or -job.priority != entry[0]
                    or job.not_before > now):
                continue  # moved on, a duplicate, or re-queued for later (its ``later`` entry brings it back)
            seen.add(job.id)
            out.append(job)
            kept.append(entry)
        for entry in kept:
            heapq.heappush(self._ready, entry)
        return out

    def _compact(self) -> None:
        queued = self._counts[Q]
        if len(self._later) + len(self._ready) <= 2 * queued + 1024:
            return
        self._later = [(j.not_before, j.seq, j.id) for j in self.jobs.values() if j.status is Q]
        heapq.heapify(self._later)
        self._ready = []
