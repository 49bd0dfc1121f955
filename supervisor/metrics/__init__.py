"""Prometheus metrics of one supervisor (``prometheus``), vLLM's metric names served from llmsup's jobs (``vllm``),
histogram bounds (``buckets``), a finished job's phases (``request_times``) and the dashboard's recent history
(``stats_history``).

May import: ``core`` (job and engine records), ``settings``. Nothing from ``cluster`` or ``web``.
"""
