"""One finished job's phases, in vLLM's terms, counted from its arrival (``created_at``), not its dispatch.

vLLM splits a request's life into queue (arrival to scheduled), prefill (scheduled to first token) and decode
(first to last token); inference is prefill plus decode, end-to-end is queue plus inference. Here "scheduled" is
the dispatch of the attempt that ended the job: an attempt lost with its engine counts as waiting, as the
client saw it. Wall-clock times place the dispatch after the arrival; the run itself is timed on the monotonic
clock the core keeps for deadlines.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmsup.supervisor.core.running import RunningJob


@dataclass(frozen=True)
class RequestTimes:
    queue_s: float  # arrival -> dispatch of the last attempt
    inference_s: float  # dispatch -> settled
    ttft_s: float | None = None  # arrival -> first token (None: no token came)
    prefill_s: float | None = None  # dispatch -> first token
    decode_s: float | None = None  # first token -> last token
    per_output_token_s: float | None = None  # decode time per token after the first

    @property
    def e2e_s(self) -> float:
        return self.queue_s + self.inference_s

    @classmethod
    def of(cls, run: RunningJob, settled_mono: float, tokens: int) -> RequestTimes:
        """Times of a job settled at ``settled_mono`` with ``tokens`` generated in its last attempt."""
        job = run.job
        queue_s = max(0.0, (job.started_at or job.created_at) - job.created_at)
        inference_s = max(0.0, settled_mono - run.started_mono)
        first, last = run.first_token_mono, run.last_token_mono
        if first is None:
            return cls(queue_s, inference_s)
        prefill_s = max(0.0, first - run.started_mono)
        decode_s = max(0.0, (last if last is not None else first) - first)
        per_token = decode_s / (tokens - 1) if tokens > 1 else None
        return cls(queue_s, inference_s, queue_s + prefill_s, prefill_s, decode_s, per_token)
