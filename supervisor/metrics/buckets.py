"""Histogram bounds: vLLM's defaults, extended so that the largest bound reaches what llmsup allows.

A histogram whose last bound is below the longest possible value puts every long job in ``+Inf``, where no
quantile can be read. Time histograms therefore reach the largest deadline a job may have (``max_deadline_s``,
plus the kill grace a SIGINT-proof job may take beyond it), and those that include waiting reach the queue
timeout on top; token histograms reach the largest ``max_tokens`` and prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmsup.supervisor.settings import Settings

# llmsup's own latency bounds (the first version of /metrics)
LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# vLLM's defaults (vllm/v1/metrics/buckets.py): request phases, time to first token, inter-token latency
REQUEST_LATENCY = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)
TIME_TO_FIRST_TOKEN = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                       20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
INTER_TOKEN_LATENCY = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                       40.0, 80.0)


@dataclass(frozen=True)
class Limits:
    """The largest values llmsup lets a job reach (what the last bounds must cover)."""

    run_s: float = 3601.0  # dispatch to settled: the largest deadline plus the kill grace
    wait_s: float = 4201.0  # arrival to settled: the queue timeout on top
    generation_tokens: int = 100_000  # max_tokens_limit
    prompt_tokens: int = 200_000  # max_prompt_chars (a token is at least one character)

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        run_s = settings.max_deadline_s + settings.kill_grace_s
        return cls(run_s=run_s, wait_s=settings.queue_timeout_s + run_s,
                   generation_tokens=settings.max_tokens_limit, prompt_tokens=settings.max_prompt_chars)


def reaching(bounds: Sequence[float], top: float) -> tuple[float, ...]:
    """``bounds``, then doublings of its last bound until one is at least ``top``."""
    out = list(bounds)
    while out[-1] < top:
        out.append(out[-1] * 2)
    return tuple(out)


def one_two_five(top: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to the first bound that is at least ``top`` (vLLM's token-count series)."""
    out: list[float] = []
    scale = 1
    while not out or out[-1] < top:
        for mantissa in (1, 2, 5):
            out.append(float(mantissa * scale))
            if out[-1] >= top:
                break
        scale *= 10
    return tuple(out)
