"""vLLM's own Grafana dashboard works on llmsup's ``/metrics``: every metric its PromQL names is served.

The dashboard is vLLM's example (``tests/data/vllm_grafana.json``, origin in ``tests/data/README.md``). Each
panel query is parsed for metric names (histograms' ``_bucket`` / ``_sum`` / ``_count`` and counters' ``_total``
included, as the queries write them); each must be a sample in the exposition, with the ``model_name`` label the
dashboard filters on. What llmsup cannot honestly serve is listed in ``NOT_SERVED`` with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fakecore import key_of, make_core
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.requests import JobRequest

pytestmark = pytest.mark.timeout(10)
DASHBOARD = Path(__file__).parent / "data" / "vllm_grafana.json"
NOT_SERVED = {
    "vllm:kv_cache_usage_perc": "the KV cache is vLLM's block manager inside an engine; llmsup's engines do not "
                                "report its fill, and the sim and transformers backends have no paged cache",
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def expressions(node: Any) -> Iterator[str]:
    """Every ``expr`` of the dashboard's panel targets."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label names or
    grouping labels (label matchers, ranges, strings and ``by (...)`` lists are cut out first)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()
        if following.startswith("(") or match.group() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_the_parser_finds_metric_names_and_nothing_else() -> None:
    expr = ('histogram_quantile(0.99, sum by(le) (rate(vllm:e2e_request_latency_seconds_bucket'
            '{model_name="$model_name"}[$__rate_interval])))')
    assert metric_names(expr) == {"vllm:e2e_request_latency_seconds_bucket"}
    assert metric_names("rate(a_sum{x=\"y\"}[5m])\n/\nrate(a_count[5m])") == {"a_sum", "a_count"}
    assert metric_names("sum by(finished_reason) (increase(vllm:request_success_total[1m]))") == {
        "vllm:request_success_total"}


def served_samples(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    """The exposition after a few jobs ran: sample name -> the label sets it carries."""
    core, _, clock = make_core(run_dir)
    for prompt in ("one", "two"):
        job = core.submit(JobRequest(prompt=prompt, max_tokens=4), clock.now).job
        core.dispatch_ready(clock.now)
        key = key_of(core, job.id)
        for seq in range(3):
            clock.advance(0.05)
            core.report(ev.TokenPiece(key, seq, "x"), clock.now)
        core.report(ev.JobReply(key, result={"outcome": "completed", "text": "xxx", "tokens": 3,
                                             "finish_reason": "stop", "prompt_tokens": 2}), clock.now)
    core.update_gauges(clock.now)
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(generate_latest(core.metrics.registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.labels)
    return samples


def test_every_metric_of_vllms_grafana_dashboard_is_served_with_its_model_name_label(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(expressions(dashboard["panels"]))
    wanted = set().union(*(metric_names(e) for e in exprs))
    assert len(exprs) >= 20 and len(wanted) >= 15  # the dashboard was read, not an empty file
    samples = served_samples(tmp_path)
    missing = {name for name in wanted - set(NOT_SERVED) if name not in samples}
    assert not missing, f"the dashboard queries metrics /metrics does not serve: {sorted(missing)}"
    unlabelled = {name for name in wanted - set(NOT_SERVED) if not all("model_name" in s for s in samples[name])}
    assert not unlabelled, f"served without the model_name label the dashboard filters on: {sorted(unlabelled)}"
    assert set(NOT_SERVED) <= wanted, "a metric listed as not served is no longer in the dashboard"
    variables = [v.get("definition", "") for v in dashboard["templating"]["list"]]
    assert "label_values(model_name)" in variables  # the dashboard's model picker: the label exists (above)
