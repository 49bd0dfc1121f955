"""vLLM's metric names (``vllm:*``, as vLLM's ``vllm/v1/metrics/loggers.py`` defines them), served from llmsup's jobs.

A dashboard or alert written for vLLM's ``/metrics`` reads these unchanged. Every series carries the
``model_name`` label (the served model name); vLLM's ``engine`` label (its data-parallel rank) is left out:
llmsup's engine ids are never reused, so as a label they would grow without bound. Every series of a model
exists from its first scrape on, at 0, as vLLM's do.

What llmsup observes, in vLLM's terms (``request_times.py`` for the phases):

- a request is a job; ``num_requests_waiting`` counts queued jobs, ``num_requests_running`` running ones;
- time to first token and end-to-end latency count from the job's arrival, not its dispatch;
- ``generation_tokens`` grows with each streamed piece and is made exact when the job settles;
- ``inter_token_latency_seconds`` is the gap between streamed pieces (a piece may carry more than one token, as
  a vLLM step may);
- ``request_success{finished_reason}`` counts every job that ended: ``stop`` / ``length`` (generation ended on its
  own), ``abort`` (cancelled or killed), ``error`` (failed), and llmsup's own ``timeout`` (its deadline stopped
  it) and ``expired`` (it waited past its queue timeout, never ran).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmsup.supervisor.metrics import buckets as b
from llmsup.supervisor.metrics.request_times import RequestTimes

FINISHED_REASONS = ("stop", "length", "abort", "error", "timeout", "expired")
MODEL = ["model_name"]


@dataclass(frozen=True)
class ModelSeries:
    """The children of every ``vllm:*`` family for one model name."""

    prompt_tokens: Counter
    generation_tokens: Counter
    success: dict[str, Counter]
    ttft: Histogram
    inter_token: Histogram
    per_output_token: Histogram
    e2e: Histogram
    queue: Histogram
    inference: Histogram
    prefill: Histogram
    decode: Histogram
    request_prompt_tokens: Histogram
    request_generation_tokens: Histogram
    max_generation_tokens: Histogram
    params_max_tokens: Histogram

    def token_piece(self, gap_s: float | None) -> None:
        """A streamed piece arrived ``gap_s`` after the job's previous one (None: its first)."""
        self.generation_tokens.inc()
        if gap_s is not None:
            self.inter_token.observe(gap_s)

    def settled(self, times: RequestTimes | None, tokens: int, pieces: int, prompt_tokens: int,
                max_tokens: int) -> None:
        """An attempt settled with ``tokens`` generated (``pieces`` of them counted already as they streamed);
        ``times`` is None when the job goes back to the queue."""
        if tokens > pieces:
            self.generation_tokens.inc(tokens - pieces)
        if times is None:
            return
        if prompt_tokens > 0:  # 0: the backend did not say (a job interrupted before it did)
            self.prompt_tokens.inc(prompt_tokens)
            self.request_prompt_tokens.observe(prompt_tokens)
        self.request_generation_tokens.observe(tokens)
        self.max_generation_tokens.observe(max_tokens)
        self.params_max_tokens.observe(max_tokens)
        self.queue.observe(times.queue_s)
        self.inference.observe(times.inference_s)
        if times.ttft_s is not None:
            self.ttft.observe(times.ttft_s)
        if times.prefill_s is not None:
            self.prefill.observe(times.prefill_s)
        if times.decode_s is not None:
            self.decode.observe(times.decode_s)
        if times.per_output_token_s is not None:
            self.per_output_token.observe(times.per_output_token_s)

    def finished(self, reason: str, e2e_s: float) -> None:
        """A job ended (whether it ran or not), ``e2e_s`` after it arrived."""
        self.success[reason if reason in self.success else "error"].inc()
        self.e2e.observe(max(0.0, e2e_s))


class VLLMMetrics:
    def __init__(self, registry: CollectorRegistry, limits: b.Limits) -> None:
        r = registry
        run, wait = limits.run_s, limits.wait_s

        def histogram(name: str, doc: str, bounds: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, MODEL, buckets=bounds, registry=r)

        self.running = Gauge("vllm:num_requests_running", "Jobs running on engines.", MODEL, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Jobs waiting in the queue.", MODEL, registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens of finished jobs (as their backend "
                                     "counted them).", MODEL, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.", MODEL, registry=r)
        self.success = Counter("vllm:request_success", "Jobs that ended, by finished_reason (stop, length, abort, "
                               "error; llmsup's timeout and expired).", MODEL + ["finished_reason"], registry=r)
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Arrival to first token.",
                              b.reaching(b.TIME_TO_FIRST_TOKEN, wait))
        self.inter_token = histogram("vllm:inter_token_latency_seconds", "Gap between streamed pieces of a job.",
                                     b.reaching(b.INTER_TOKEN_LATENCY, run))
        self.per_output_token = histogram("vllm:request_time_per_output_token_seconds",
                                          "Decode time per output token after the first, per job.",
                                          b.reaching(b.INTER_TOKEN_LATENCY, run))
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Arrival to end of a job.",
                             b.reaching(b.REQUEST_LATENCY, wait))
        self.queue = histogram("vllm:request_queue_time_seconds", "Arrival to dispatch of the attempt that ended "
                               "the job.", b.reaching(b.REQUEST_LATENCY, wait))
        self.inference = histogram("vllm:request_inference_time_seconds", "Dispatch to end of a job's last attempt.",
                                   b.reaching(b.REQUEST_LATENCY, run))
        self.prefill = histogram("vllm:request_prefill_time_seconds", "Dispatch to first token.",
                                 b.reaching(b.REQUEST_LATENCY, run))
        self.decode = histogram("vllm:request_decode_time_seconds", "First to last token.",
                                b.reaching(b.REQUEST_LATENCY, run))
        self.request_prompt_tokens = histogram("vllm:request_prompt_tokens", "Prompt tokens per job.",
                                               b.one_two_five(limits.prompt_tokens))
        self.request_generation_tokens = histogram("vllm:request_generation_tokens", "Tokens generated per job.",
                                                   b.one_two_five(limits.generation_tokens))
        self.max_generation_tokens = histogram("vllm:request_max_num_generation_tokens",
                                               "Most tokens a job could generate (its max_tokens).",
                                               b.one_two_five(limits.generation_tokens))
        self.params_max_tokens = histogram("vllm:request_params_max_tokens", "The max_tokens parameter of jobs.",
                                           b.one_two_five(limits.generation_tokens))
        self._series: dict[str, ModelSeries] = {}
        self._gauged: set[str] = set()  # the model names the two gauges carry now (one per pool)

    def series(self, model: str) -> ModelSeries:
        found = self._series.get(model)
        if found is None:
            found = self._series[model] = ModelSeries(
                self.prompt_tokens.labels(model), self.generation_tokens.labels(model),
                {reason: self.success.labels(model, reason) for reason in FINISHED_REASONS},
                self.ttft.labels(model), self.inter_token.labels(model), self.per_output_token.labels(model),
                self.e2e.labels(model), self.queue.labels(model), self.inference.labels(model),
                self.prefill.labels(model), self.decode.labels(model), self.request_prompt_tokens.labels(model),
                self.request_generation_tokens.labels(model), self.max_generation_tokens.labels(model),
                self.params_max_tokens.labels(model),
            )
        return found

    def set_queues(self, queues: dict[str, tuple[int, int]]) -> None:
        """The two scheduler gauges (model name -> (waiting, running)), under the current model names only."""
        for gone in self._gauged - set(queues):
            self.waiting.remove(gone)
            self.running.remove(gone)
        self._gauged = set(queues)
        for model, (waiting, running) in queues.items():
            self.series(model)
            self.waiting.labels(model).set(waiting)
            self.running.labels(model).set(running)
