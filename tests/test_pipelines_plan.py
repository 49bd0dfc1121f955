"""Pipelines' decisions, pure: a spec checked whole, and what runs next given the steps' jobs (time passed in)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmsup.supervisor.core.jobs import EngineRef, Job, JobStatus
from llmsup.supervisor.core.requests import InvalidRequest
from llmsup.supervisor.pipelines.plan import advance
from llmsup.supervisor.pipelines.records import Pipeline, PipelineStatus, StepRecord, StepStatus
from llmsup.supervisor.pipelines.spec import PipelineSpec, StepSpec, check, render
from llmsup.supervisor.pipelines.store import DuplicatePipeline, MemoryPipelineStore, SQLitePipelineStore

S = StepStatus
POOLS = ["default", "tiny"]
E1 = EngineRef(1, "h1", 11, "0")
E2 = EngineRef(2, "h1", 12, "1")
E3 = EngineRef(3, "h2", 13, "0")


def pipeline(*steps: StepSpec, deadline_s: float | None = None) -> Pipeline:
    spec = check(PipelineSpec(steps, deadline_s), POOLS)
    return Pipeline(spec, created_at=100.0, steps=tuple(StepRecord(s.name) for s in steps))


class Jobs(dict[str, Job]):
    """The steps' jobs as the supervisor would hold them: started by ``run``, ended by ``end``."""

    def start(self, p: Pipeline, now: float) -> Pipeline:
        adv = advance(p, self, now)
        p = adv.pipeline
        for start in adv.starts:
            job = Job(start.prompt, id=f"j{len(self)}", deadline_s=start.deadline_s or 60,
                      affinity=EngineRef(**start.affinity) if start.affinity else None)
            self[job.id] = job
            rec = p.step(start.step)
            p = p.with_step(replace(rec, job_ids=rec.job_ids + (job.id,)))
        return p

    def end(self, job_id: str, status: JobStatus = JobStatus.SUCCEEDED, output: str = "", engine: EngineRef = E1) -> None:
        self[job_id] = replace(self[job_id], status=status, output=output, engine=engine, error=None)


def test_a_spec_is_checked_whole() -> None:
    ok = StepSpec("a", "hi")
    for bad, words in [
        ((ok, StepSpec("a", "x")), "unique"),
        ((StepSpec("b", "x", after=("zz",)),), "unknown steps"),
        ((StepSpec("a", "x", after=("b",)), StepSpec("b", "y", after=("a",))), "cycle"),
        ((ok, StepSpec("b", "{{c}}", after=("a",))), "cannot see"),
        ((ok, StepSpec("b", "{{item}}", after=("a",))), "needs a map"),
        ((ok, StepSpec("b", "x", after=("a",), affinity="c")), "affinity"),
        ((ok, StepSpec("b", "x", pool="big")), "unknown pool 'big'; pools: default, tiny"),
        ((ok, StepSpec("b", "{{item}}", map="{{c}}", after=("a",))), "map must be"),
        ((StepSpec("item", "x"),), "invalid step name"),
        ((StepSpec("a", "x", map_concurrency=2),), "without a map"),
    ]:
        with pytest.raises(InvalidRequest, match=words):
            check(PipelineSpec(bad), POOLS)
    assert check(PipelineSpec((ok, StepSpec("b", "Summarize: {{ a }}", after=("a",)))), POOLS)


def test_function_steps_are_placed_in_a_pool_of_functions_and_prompt_steps_on_a_model() -> None:
    fns = ("fetch",)
    placed = check(PipelineSpec((StepSpec("f", "/doc", fn="fetch"), StepSpec("b", "{{f}}", after=("f",)))),
                   POOLS, fns, ["io", "io2"])
    assert [s.pool for s in placed.steps] == ["io", None]  # the first pool of functions; None: the first model's
    assert check(PipelineSpec((StepSpec("f", "x", fn="fetch", pool="io2"),)), POOLS, fns, ["io", "io2"]).steps[0].pool == "io2"
    for steps, function_pools, words in [
        ((StepSpec("f", "x", fn="fetch"),), [], "needs a pool of backend python"),
        ((StepSpec("f", "x", fn="fetch", pool="tiny"),), ["io"], "pool 'tiny' runs a model"),
        ((StepSpec("p", "x", pool="io"),), ["io"], "pool 'io' runs functions"),
        ((StepSpec("f", "x", fn="nope"),), ["io"], "no function 'nope'; registered: fetch"),
    ]:
        with pytest.raises(InvalidRequest, match=words):
            check(PipelineSpec(steps), POOLS, fns, function_pools)
    with pytest.raises(InvalidRequest, match="functions only"):  # one pool, of functions: a prompt step has no model
        check(PipelineSpec((StepSpec("p", "x"),)), ["default"], fns, ["default"])


def test_render_substitutes_plain_text_only() -> None:
    assert render("S: {{a}} / {{item}} / {{b}} {% x %}", {"a": "{{b}}"}, "it") == "S: {{b}} / it / {{b}} {% x %}"


def test_three_steps_see_each_others_outputs_in_order() -> None:
    p = pipeline(StepSpec("a", "one"), StepSpec("b", "two {{a}}", after=("a",)),
                 StepSpec("c", "three {{a}} {{b}}", after=("a", "b")))
    jobs = Jobs()
    p = jobs.start(p, 101)
    assert [s.status for s in p.steps] == [S.QUEUED, S.WAITING, S.WAITING] and p.status is PipelineStatus.QUEUED
    jobs.end("j0", output="A")
    p = jobs.start(p, 102)
    assert jobs["j1"].prompt == "two A" and p.status is PipelineStatus.RUNNING
    jobs.end("j1", output="B")
    p = jobs.start(p, 103)
    assert jobs["j2"].prompt == "three A B"
    jobs.end("j2", output="C")
    p = jobs.start(p, 104)
    assert p.status is PipelineStatus.SUCCEEDED and p.finished_at == 104 and p.step("c").output == "C"


def test_a_map_runs_its_items_within_its_concurrency_and_reduces_in_item_order() -> None:
    p = pipeline(StepSpec("split", "x"), StepSpec("m", "do {{item}}", after=("split",), map="{{split}}", map_concurrency=3),
                 StepSpec("r", "merge {{m}}", after=("m",)))
    jobs = Jobs()
    p = jobs.start(p, 101)
    jobs.end("j0", output=" [1, \"two\", {\"k\": 3}] ")
    p = jobs.start(p, 102)
    assert [jobs[j].prompt for j in p.step("m").job_ids] == ["do 1", "do two", 'do {"k": 3}']
    p = pipeline(StepSpec("m", "{{item}}", map=tuple(str(i) for i in range(20)), map_concurrency=4),
                 StepSpec("r", "merge {{m}}", after=("m",)))
    jobs = Jobs()
    p = jobs.start(p, 101)
    assert len(p.step("m").job_ids) == 4
    for _round in range(10):
        for job_id in reversed(p.step("m").job_ids):  # finish out of order: the outputs keep item order
            if not jobs[job_id].status.terminal:
                jobs.end(job_id, output=f"out{jobs[job_id].prompt}")
        p = jobs.start(p, 102)
        in_flight = [j for j in p.step("m").job_ids if not jobs[j].status.terminal]
        assert len(in_flight) <= 4
    assert p.step("m").status is S.SUCCEEDED and p.step("m").outputs == tuple(f"out{i}" for i in range(20))
    assert jobs[p.step("r").job_ids[0]].prompt == "merge " + '["out0", "out1", "out2", "out3", "out4", "out5", ' \
        '"out6", "out7", "out8", "out9", "out10", "out11", "out12", "out13", "out14", "out15", "out16", "out17", ' \
        '"out18", "out19"]'


def test_a_map_source_that_is_not_a_list_fails_the_pipeline() -> None:
    p = pipeline(StepSpec("a", "x"), StepSpec("m", "{{item}}", after=("a",), map="{{a}}"))
    jobs = Jobs()
    p = jobs.start(p, 101)
    jobs.end("j0", output="not json")
    p = jobs.start(p, 102)
    assert p.status is PipelineStatus.FAILED and p.step("m").status is S.FAILED and "JSON list" in p.step("m").error


def test_a_timed_out_step_ends_the_pipeline_cancelling_running_and_skipping_waiting() -> None:
    p = pipeline(StepSpec("a", "x"), StepSpec("b", "y"), StepSpec("c", "{{a}}", after=("a",)))
    jobs = Jobs()
    p = jobs.start(p, 101)
    jobs.end("j0", JobStatus.TIMED_OUT, "partial")
    adv = advance(p, jobs, 102)
    got = adv.pipeline
    assert got.status is PipelineStatus.TIMED_OUT and "step 'a' timed_out" in got.error
    assert [s.status for s in got.steps] == [S.TIMED_OUT, S.CANCELLED, S.SKIPPED] and adv.cancels == ("j1",)
    assert advance(got, jobs, 103).pipeline == got  # an ended pipeline stays as it ended


def test_the_pipeline_deadline_bounds_the_whole_and_each_step_gets_what_is_left() -> None:
    p = pipeline(StepSpec("a", "x", deadline_s=100), StepSpec("b", "{{a}}", after=("a",), deadline_s=5), deadline_s=30)
    jobs = Jobs()
    p = jobs.start(p, 101)
    assert jobs["j0"].deadline_s == pytest.approx(29)  # 30 from creation at 100, started at 101
    jobs.end("j0", output="A")
    p = jobs.start(p, 110)
    assert jobs["j1"].deadline_s == 5
    adv = advance(p, jobs, 130)
    assert adv.pipeline.status is PipelineStatus.TIMED_OUT and adv.cancels == ("j1",)
    assert "pipeline deadline of 30" in adv.pipeline.error


def test_affinity_names_the_engine_and_the_record_says_where_the_step_ran() -> None:
    p = pipeline(StepSpec("a", "x"), StepSpec("b", "{{a}}", after=("a",), affinity="a"))
    for ran_on, placement in ((E1, "engine"), (E2, "host"), (E3, "anywhere")):
        jobs = Jobs()
        q = jobs.start(p, 101)
        jobs.end("j0", output="A", engine=E1)
        q = jobs.start(q, 102)
        assert jobs["j1"].affinity == E1
        jobs.end("j1", output="B", engine=ran_on)
        q = jobs.start(q, 103)
        assert q.step("b").placement == placement and q.status is PipelineStatus.SUCCEEDED


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_pipeline_store_contract(kind: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = MemoryPipelineStore() if kind == "memory" else SQLitePipelineStore(tmp_path / "p.sqlite")
    a = replace(pipeline(StepSpec("a", "x", map=("1", "2"))), owner="ann", idempotency_key="k1")
    b = replace(pipeline(StepSpec("b", "y")), owner="bob", created_at=200.0)
    store.add(a)
    store.add(b)
    with pytest.raises(DuplicatePipeline) as dup:
        store.add(replace(pipeline(StepSpec("c", "z")), owner="ann", idempotency_key="k1"))
    assert dup.value.existing.id == a.id
    store.add(replace(pipeline(StepSpec("c", "z")), owner="bob", idempotency_key="k1"))  # keys are per owner
    ended = replace(b, status=PipelineStatus.SUCCEEDED, steps=(StepRecord("b", S.SUCCEEDED, ("j1",), None, ("out",)),))
    store.put(ended)
    assert store.get(b.id) == ended and store.get("pipe-none") is None
    assert [p.id for p in store.active()][:1] == [a.id] and b.id not in [p.id for p in store.active()]
    assert [p.id for p in store.recent("bob", 10)][-1] == b.id and all(p.owner == "bob" for p in store.recent("bob", 10))
    assert store.get(a.id) == a  # the spec (a map of items) round-trips whole
    store.close()


def test_pipeline_store_fsyncs_only_a_new_pipeline_and_its_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = SQLitePipelineStore(tmp_path / "p.sqlite")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    p = pipeline(StepSpec("a", "x"), StepSpec("b", "{{a}}", after=("a",)))
    store.add(p)
    insert = next(i for i, s in enumerate(statements) if s.startswith("INSERT"))
    assert statements[insert - 1:insert + 2:2] == ["PRAGMA synchronous=FULL", "PRAGMA synchronous=NORMAL"]
    statements.clear()
    store.put(replace(p, status=PipelineStatus.RUNNING))
    assert not any("synchronous" in s for s in statements)  # a change between: no fsync
    store.put(replace(p, status=PipelineStatus.SUCCEEDED))
    update = [i for i, s in enumerate(statements) if s.startswith("UPDATE")][-1]
    assert statements[update - 1:update + 2:2] == ["PRAGMA synchronous=FULL", "PRAGMA synchronous=NORMAL"]
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1 and store.get(p.id).status is PipelineStatus.SUCCEEDED
    store.close()
