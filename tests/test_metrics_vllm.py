"""Metrics under vLLM's names and llmsup's own, observed by the supervisor core on a fake cluster with a fake
clock: every duration below is exact because time moves only when the test moves it."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fakecore import key_of, make_core
from llmsup.engines.messages import JobResult
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.owner import SupervisorCore
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.metrics import buckets as metric_buckets
from llmsup.supervisor.metrics.prometheus import restart_label

pytestmark = pytest.mark.timeout(10)
S = JobStatus
MIB = 1024 * 1024


def value(core: SupervisorCore, name: str, **labels: str) -> float | None:
    return core.metrics.registry.get_sample_value(name, labels)


def sim(core: SupervisorCore, name: str, **labels: str) -> float | None:
    return value(core, name, model_name="sim", **labels)


def test_a_job_phases_count_from_its_arrival_under_vllm_names(tmp_path: Path) -> None:
    core, _, clock = make_core(tmp_path)
    job = core.submit(JobRequest(prompt="p", max_tokens=8), clock.now).job
    clock.advance(2.0)  # waits 2 s in the queue
    assert core.dispatch_ready(clock.now) == 1
    key = key_of(core, job.id)
    for gap, (seq, text) in zip((0.5, 0.1, 0.2), enumerate(["a", "b", "c"]), strict=True):
        clock.advance(gap)
        core.report(ev.TokenPiece(key, seq, text), clock.now)
    assert sim(core, "vllm:generation_tokens_total") == 3  # counted as they stream
    clock.advance(0.2)
    core.report(ev.JobReply(key, result=JobResult(**{"outcome": "completed", "text": "abcd", "tokens": 4,
                                         "finish_reason": "length", "prompt_tokens": 7})), clock.now)
    assert core.get(job.id).status is S.SUCCEEDED
    expected = {  # histogram -> (count, sum)
        "vllm:time_to_first_token_seconds": (1, 2.5),  # arrival -> first token, not dispatch -> first token
        "vllm:request_queue_time_seconds": (1, 2.0),
        "vllm:request_prefill_time_seconds": (1, 0.5),
        "vllm:request_decode_time_seconds": (1, 0.3),
        "vllm:request_inference_time_seconds": (1, 1.0),
        "vllm:e2e_request_latency_seconds": (1, 3.0),
        "vllm:inter_token_latency_seconds": (2, 0.3),
        "vllm:request_time_per_output_token_seconds": (1, 0.1),
        "vllm:request_prompt_tokens": (1, 7),
        "vllm:request_generation_tokens": (1, 4),
        "vllm:request_max_num_generation_tokens": (1, 8),
        "vllm:request_params_max_tokens": (1, 8),
    }
    for name, (count, total) in expected.items():
        assert sim(core, name + "_count") == count, name
        assert sim(core, name + "_sum") == pytest.approx(total), name
    assert sim(core, "llmsup_time_to_first_token_seconds_sum") is None  # llmsup's own has no model label
    assert value(core, "llmsup_time_to_first_token_seconds_sum") == pytest.approx(0.5)  # from dispatch, as before
    assert sim(core, "vllm:generation_tokens_total") == 4  # made exact at the end
    assert sim(core, "vllm:prompt_tokens_total") == 7
    assert sim(core, "vllm:request_success_total", finished_reason="length") == 1
    assert sim(core, "vllm:request_success_total", finished_reason="stop") == 0


def test_a_deadline_the_watchdog_enforced_and_an_expired_job(tmp_path: Path) -> None:
    core, _, clock = make_core(tmp_path, queue_timeout_s=5.0)
    job = core.submit(JobRequest(prompt="p", deadline_s=1.0), clock.now).job
    core.dispatch_ready(clock.now)
    key = key_of(core, job.id)
    core.report(ev.TaskStarted(key), clock.now)
    clock.advance(1.0)
    core.tick(clock.now)
    core.report(ev.SigintDelivered(key), clock.now)
    core.report(ev.JobReply(key, result=JobResult(**{"outcome": "interrupted", "text": "", "tokens": 0})), clock.now)
    assert core.get(job.id).status is S.TIMED_OUT
    assert value(core, "llmsup_escalations_total", reason="timed_out") == 1
    assert value(core, "llmsup_deadlines_hit_total", enforced_by="watchdog") == 1
    assert value(core, "llmsup_interrupt_steps_total", step="sigint") == 1
    assert sim(core, "vllm:request_success_total", finished_reason="timeout") == 1
    assert sim(core, "vllm:time_to_first_token_seconds_count") == 0  # no token came: no time to first token

    blocker = core.submit(JobRequest(prompt="p", deadline_s=60.0), clock.now).job
    core.dispatch_ready(clock.now)  # the one engine is busy now
    late = core.submit(JobRequest(prompt="p"), clock.now).job
    clock.advance(6.0)
    assert core.expire_queued(clock.now) == 1 and core.get(late.id).status is S.EXPIRED
    assert sim(core, "vllm:request_success_total", finished_reason="expired") == 1
    assert sim(core, "vllm:e2e_request_latency_seconds_count") == 2
    assert sim(core, "vllm:request_queue_time_seconds_count") == 1  # it never ran: no phases
    assert core.running_job(blocker.id) is not None


def test_a_batched_engine_that_stops_a_job_at_its_deadline_counts_as_the_engine_enforcing_it(tmp_path: Path) -> None:
    core, _, clock = make_core(tmp_path)
    job = core.submit(JobRequest(prompt="p", deadline_s=1.0), clock.now).job
    core.dispatch_ready(clock.now)
    core.report(ev.JobReply(key_of(core, job.id), result=JobResult(**{"outcome": "interrupted", "reason": "deadline",
                                                          "text": "", "tokens": 0})), clock.now)
    assert value(core, "llmsup_deadlines_hit_total", enforced_by="engine") == 1
    assert value(core, "llmsup_escalations_total", reason="timed_out") is None


def test_time_buckets_reach_the_largest_deadline_and_token_buckets_the_limits(tmp_path: Path) -> None:
    core, _, clock = make_core(tmp_path, max_deadline_s=20_000.0, max_tokens_limit=300_000)
    core.update_gauges(clock.now)  # a model's series exist from the first scrape on, at 0
    text = generate_latest(core.metrics.registry).decode()
    last: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        bounds = [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")]
        finite = [x for x in bounds if x != float("inf")]
        if finite:
            last[family.name] = max(finite)
    run_s = 20_000.0 + core.settings.kill_grace_s
    for name in ("vllm:e2e_request_latency_seconds", "vllm:request_inference_time_seconds",
                 "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                 "llmsup_run_seconds", "llmsup_interrupt_latency_seconds"):
        assert last[name] >= run_s, name
    assert last["vllm:request_queue_time_seconds"] >= run_s + core.settings.queue_timeout_s
    assert last["vllm:request_generation_tokens"] >= 300_000
    assert metric_buckets.one_two_five(100) == (1, 2, 5, 10, 20, 50, 100)
    assert metric_buckets.reaching((1, 2), 5) == (1, 2, 4, 8)


def test_per_engine_memory_gauges_follow_the_engines(tmp_path: Path) -> None:
    core, _, clock = make_core(tmp_path, engines=2, gpu_count=2)
    core.update_gauges(clock.now)
    assert value(core, "llmsup_engine_rss_bytes", engine="0") == 100 * MIB
    assert value(core, "llmsup_engine_rss_bytes", engine="1") == 101 * MIB
    assert value(core, "llmsup_engine_gpu_memory_bytes", engine="1", gpu="1") == 2048 * MIB
    core.report(ev.EngineBeat(1, rss_mb=150.0, gpu_mem_mb=4096.0), clock.now)
    core.update_gauges(clock.now)
    assert value(core, "llmsup_engine_gpu_memory_bytes", engine="1", gpu="1") == 4096 * MIB
    assert value(core, "llmsup_engine_rss_bytes", engine="1") == 150 * MIB
    assert core.engine_views(clock.now)[1]["gpu_mem_mb"] == 4096.0
    core.report(ev.EngineUnregistered(1), clock.now)
    core.update_gauges(clock.now)
    assert value(core, "llmsup_engine_rss_bytes", engine="1") is None  # gone: no series left behind
    assert value(core, "llmsup_engine_gpu_memory_bytes", engine="1", gpu="1") is None
    assert value(core, "llmsup_engine_rss_bytes", engine="0") == 100 * MIB


def test_an_engine_on_the_cpu_has_no_gpu_memory_series(tmp_path: Path) -> None:
    core, _, clock = make_core(tmp_path)
    core.update_gauges(clock.now)
    assert value(core, "llmsup_engine_rss_bytes", engine="0") == 100 * MIB
    assert "llmsup_engine_gpu_memory_bytes{" not in generate_latest(core.metrics.registry).decode()


def test_scheduler_gauges_and_standbys(tmp_path: Path) -> None:
    core, _, clock = make_core(tmp_path, engines=1, standby=1)
    for _ in range(3):
        core.submit(JobRequest(prompt="p"), clock.now)
    core.dispatch_ready(clock.now)
    core.update_gauges(clock.now)
    assert sim(core, "vllm:num_requests_running") == 1 and sim(core, "vllm:num_requests_waiting") == 2
    assert value(core, "llmsup_queue_depth") == 2 and value(core, "llmsup_running_jobs") == 1
    assert value(core, "llmsup_standby_target") == 1
    assert value(core, "llmsup_engines", state="standby") == 1


def test_the_model_name_label_moves_with_the_served_name(tmp_path: Path) -> None:
    core, _, clock = make_core(tmp_path, backend="auto")  # no name given: the engines' model names the series
    core.update_gauges(clock.now)
    assert sim(core, "vllm:num_requests_waiting") == 0
    core.settings.served_model_name = "my-model"
    core.update_gauges(clock.now)
    assert sim(core, "vllm:num_requests_waiting") is None  # the old name's gauges are gone
    assert value(core, "vllm:num_requests_waiting", model_name="my-model") == 0
    assert value(core, "vllm:request_success_total", model_name="my-model", finished_reason="stop") == 0


def test_each_pool_has_its_model_name_and_its_own_gauges(tmp_path: Path) -> None:
    pools = [{"name": "small", "engines": 1, "served_model_name": "m-small"},
             {"name": "big", "engines": 1, "served_model_name": "m-big"}]
    core, _, clock = make_core(tmp_path, engines=2, pools=pools)
    big = core.submit(JobRequest(prompt="p", max_tokens=4, pool="big"), clock.now).job
    small = [core.submit(JobRequest(prompt="p", pool="small"), clock.now).job for _ in range(3)]
    assert core.dispatch_ready(clock.now) == 2  # one engine each: two small jobs wait
    key = key_of(core, big.id)
    for seq in range(3):
        core.report(ev.TokenPiece(key, seq, "x"), clock.now)
    core.update_gauges(clock.now)
    assert value(core, "vllm:generation_tokens_total", model_name="m-big") == 3
    assert value(core, "vllm:generation_tokens_total", model_name="m-small") == 0
    assert value(core, "vllm:num_requests_waiting", model_name="m-small") == 2
    assert value(core, "vllm:num_requests_waiting", model_name="m-big") == 0
    assert value(core, "vllm:num_requests_running", model_name="m-big") == 1
    assert value(core, "llmsup_pool_queue_depth", pool="small") == 2
    assert value(core, "llmsup_pool_running_jobs", pool="small") == 1
    assert value(core, "llmsup_pool_engines", pool="big", state="busy") == 1
    assert value(core, "llmsup_pool_engines", pool="small", state="idle") == 0
    core.report(ev.JobReply(key, result=JobResult(**{"outcome": "completed", "text": "xxxx", "tokens": 4,
                                         "finish_reason": "length"})), clock.now)
    core.cancel(small[2].id, clock.now)
    core.update_gauges(clock.now)
    assert value(core, "vllm:request_success_total", model_name="m-big", finished_reason="length") == 1
    assert value(core, "vllm:request_success_total", model_name="m-small", finished_reason="abort") == 1
    assert value(core, "llmsup_pool_queue_depth", pool="small") == 1
    assert value(core, "llmsup_pool_engines", pool="big", state="idle") == 1


def test_history_samples_once_a_second_with_rates(tmp_path: Path) -> None:
    core, _, clock = make_core(tmp_path)
    core.update_gauges(clock.now)  # starts the differences
    job = core.submit(JobRequest(prompt="p"), clock.now).job
    core.dispatch_ready(clock.now)
    key = key_of(core, job.id)
    for seq in range(10):
        core.report(ev.TokenPiece(key, seq, "x"), clock.now)
    clock.advance(0.5)
    core.update_gauges(clock.now)
    assert list(core.metrics.history.samples) == []  # not a second yet
    clock.advance(0.5)
    core.update_gauges(clock.now)
    (sample,) = core.metrics.history.samples
    assert (sample.running, sample.tokens_per_s, sample.serving, sample.t) == (1, 10.0, 1, clock.wall)
    core.cancel(job.id, clock.now)
    core.report(ev.JobReply(key, result=JobResult(**{"outcome": "interrupted", "text": "x" * 10, "tokens": 10})), clock.now)
    clock.advance(1.0)
    core.update_gauges(clock.now)
    assert core.metrics.history.samples[-1].interrupted == 1
    assert core.metrics.history.since(sample.t) == [core.metrics.history.samples[-1]]


def test_restart_reasons_are_a_small_set_of_label_values() -> None:
    assert restart_label("sigint_failed") == "sigint_failed"
    assert restart_label("no heartbeat for 10.3s") == "no_heartbeat"
    assert restart_label("lost") == "lost"


def test_an_engine_started_for_a_pool_by_someone_else_joins_that_pool(tmp_path: Path) -> None:
    pools = [{"name": "small", "engines": 1}, {"name": "big", "engines": 1, "served_model_name": "m-big"}]
    core, _, clock = make_core(tmp_path, engines=2, pools=pools)
    for engine_id, pool in ((50, "big"), (51, ""), (52, "nope")):  # a join agent's engines (no launch of ours)
        core.report(ev.EngineRegistered(engine_id), clock.now)
        ident = ev.EngineIdentity(host="other", host_key="other|boot", pid=5000 + engine_id, gpu="0", pool=pool)
        core.report(ev.EngineIdentified(engine_id, ident), clock.now)
    assert {e.id: e.pool for e in core.pool if e.id >= 50} == {50: "big", 51: "small", 52: "small"}
