"""Pure logic with time passed in: outcome classification, expiry, recovery after a restart."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from conftest import make_settings
from llmsup.engines.messages import JobResult
from llmsup.supervisor.cluster.task_errors import task_failure
from llmsup.supervisor.core.engine_state import Engine
from llmsup.supervisor.core.jobs import EngineRef, Job, JobStatus
from llmsup.supervisor.core.ladder import Escalation, Rung
from llmsup.supervisor.core.now import Now
from llmsup.supervisor.core.outcomes import decode_reply, from_failure, from_result, lost
from llmsup.supervisor.core.requests import InvalidRequest, JobRequest, QueueFull
from llmsup.supervisor.core.running import RunningJob
from llmsup.supervisor.core.transitions import transition
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.store import MemoryStore

S = JobStatus
pytestmark = pytest.mark.timeout(10)


def running(attempts: int = 1, reason: JobStatus | None = None, deadline: float = 5.0) -> RunningJob:
    job = Job(prompt="p", deadline_s=deadline).with_changes(status=S.RUNNING, attempts=attempts)
    engine = Engine(id=3, host="h", host_key="h|b", pid=10, gpu="0", set_id="e3")
    run = RunningJob(job, engine, 0.0)
    run.pieces.extend(["a ", "b "])
    if reason is not None:
        run.escalation = Escalation(reason, False, 0.0, Rung.INTERRUPTED, 0.0, 0.0)
    return run


class RemoteError(Exception):
    def __init__(self, ename: str) -> None:
        super().__init__(ename)
        self.ename = ename


def test_completed_result_succeeds() -> None:
    st = from_result(JobResult("completed", "xyz", 3, "stop"), running(), 3)
    assert (st.status, st.text, st.tokens, st.finish_reason) == (S.SUCCEEDED, "xyz", 3, "stop")


def test_interrupted_result_takes_the_reason_asked_for() -> None:
    result = JobResult("interrupted", "ab", 2)
    assert from_result(result, running(reason=S.TIMED_OUT), 3).status is S.TIMED_OUT
    assert from_result(result, running(reason=S.CANCELLED), 3).status is S.CANCELLED
    outside = from_result(result, running(reason=None), 3)
    assert outside.status is S.CANCELLED and "outside" in outside.error


def test_batched_engine_reasons() -> None:
    assert from_result(JobResult("interrupted", reason="deadline"), running(), 3).status is S.TIMED_OUT
    stopped = from_result(JobResult("interrupted", reason="stopped"), running(), 3)
    assert stopped.status is S.QUEUED and not stopped.charge_attempt


def test_errors_fail_unless_transient_with_attempts_left() -> None:
    err = JobResult("error", error="ValueError: x", traceback="Traceback (most recent call last): ...")
    failed = from_result(err, running(), 3)
    assert failed.status is S.FAILED and failed.error == "ValueError: x"
    assert failed.error_detail == "Traceback (most recent call last): ..."
    transient = replace(err, transient=True, engine_dead=True)
    st = from_result(transient, running(attempts=1), 3)
    assert st.status is S.QUEUED and st.engine_lost
    assert from_result(transient, running(attempts=3), 3).status is S.FAILED


def test_a_reply_this_build_cannot_read_fails_the_job_saying_so() -> None:
    typed = JobResult("completed", "x", 1)
    assert decode_reply(typed) is typed
    assert decode_reply({"outcome": "completed", "text": "x", "tokens": 1, "version": 1, "kind": "result"}) == typed
    for reply in (None, {"outcome": "completed", "text": "x"}, {"outcome": "completed", "version": 2, "kind": "result"},
                  {"outcome": "completed", "tokens": "1", "version": 1, "kind": "result"}, b"\xff"):
        result = decode_reply(reply)
        assert result.outcome == "error" and "unreadable result" in result.error
        assert from_result(result, running(), 3).status is S.FAILED


def test_exceptions_keyboard_interrupt_engine_error_other() -> None:
    assert from_failure(task_failure(RemoteError("KeyboardInterrupt")), running(reason=S.TIMED_OUT), 3).status is S.TIMED_OUT
    lost_one = from_failure(task_failure(RemoteError("EngineError")), running(attempts=1), 3)
    assert lost_one.status is S.QUEUED and lost_one.engine_lost
    assert from_failure(task_failure(RemoteError("EngineError")), running(attempts=3), 3).status is S.FAILED
    killed = running(reason=S.TIMED_OUT)
    killed.killed = True
    st = from_failure(task_failure(RemoteError("EngineError")), killed, 3)
    assert st.status is S.TIMED_OUT and st.text == "a b " and "engine killed" in st.error
    other = from_failure(task_failure(RemoteError("ZeroDivisionError")), running(), 3)
    assert other.status is S.FAILED and other.error_detail is None
    escaped = RemoteError("SystemExit")
    escaped.traceback = "Traceback (most recent call last): ...\nSystemExit: 3"  # as ipyparallel's RemoteError
    assert from_failure(task_failure(escaped), running(), 3).error_detail == escaped.traceback


def test_uncharged_requeues_are_bounded() -> None:
    run = running(attempts=1)
    assert lost(run, "x", 2, charge=False).status is S.QUEUED
    run.job = run.job.with_changes(lost_engines=(1, 2, 3, 4))
    assert lost(run, "x", 2, charge=False).status is S.FAILED


def offline(tmp_path: Path, **kw: object) -> Supervisor:
    return Supervisor(make_settings(tmp_path, **kw), store=MemoryStore(), clock=lambda: 1000.0)


def test_queue_expiry_uses_the_time_passed_in(tmp_path: Path) -> None:
    sup = offline(tmp_path, queue_timeout_s=60)
    job = sup.submit(JobRequest("wait")).job
    short = sup.submit(JobRequest("short", queue_timeout_s=5)).job
    assert sup.core.expire_queued(Now(mono=0.0, wall=1004.0)) == 0
    assert sup.core.expire_queued(Now(mono=0.0, wall=1006.0)) == 1
    assert sup.get(short.id).status is S.EXPIRED and sup.get(job.id).status is S.QUEUED
    assert sup.core.expire_queued(Now(mono=0.0, wall=1061.0)) == 1 and sup.get(job.id).status is S.EXPIRED


def test_recover_requeues_running_jobs_and_fails_exhausted_ones(tmp_path: Path) -> None:
    sup = offline(tmp_path, max_attempts=2)
    store = sup.store
    a = store.add(Job(prompt="a"))
    b = store.add(Job(prompt="b"))
    ref = EngineRef(0, "h", 1, "")
    store.put(transition(a, S.RUNNING, 1.0, engine=ref))
    b2 = transition(transition(transition(b, S.RUNNING, 1.0, engine=ref), S.QUEUED, 2.0), S.RUNNING, 3.0, engine=ref)
    store.put(b2)
    sup.core.recover(Now(mono=0.0, wall=10.0))
    assert store.get(a.id).status is S.QUEUED and store.get(a.id).attempts == 1
    assert store.get(b.id).status is S.FAILED and "out of attempts" in store.get(b.id).error


def test_submit_validation_and_backpressure(tmp_path: Path) -> None:
    sup = offline(tmp_path, queue_max=2, max_tokens_limit=100)
    with pytest.raises(InvalidRequest):
        sup.submit(JobRequest(""))
    with pytest.raises(InvalidRequest):
        sup.submit(JobRequest("x", max_tokens=101))
    with pytest.raises(InvalidRequest):
        sup.submit(JobRequest("x", deadline_s=-1))
    sup.submit(JobRequest("1"))
    sup.submit(JobRequest("2"))
    with pytest.raises(QueueFull) as full:
        sup.submit(JobRequest("3"))
    assert full.value.retry_after_s >= 1
    assert len(sup.store.list()) == 2  # nothing half-created
