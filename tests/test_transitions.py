from __future__ import annotations

import pytest

from llmsup.supervisor.core.jobs import EngineRef, Job, JobStatus
from llmsup.supervisor.core.transitions import InvalidTransition, can_move, transition

pytestmark = pytest.mark.timeout(10)
S = JobStatus


def test_happy_path_sets_timestamps_and_attempts() -> None:
    job = Job(prompt="p", created_at=1.0)
    running = transition(job, S.RUNNING, 2.0, engine=EngineRef(0, "h", 1, ""))
    assert running.attempts == 1 and running.started_at == 2.0 and running.finished_at is None
    done = transition(running, S.SUCCEEDED, 3.0, output="x", tokens=1)
    assert done.finished_at == 3.0 and done.status is S.SUCCEEDED
    assert job.status is S.QUEUED  # records are immutable


def test_requeue_clears_engine_and_output() -> None:
    running = transition(Job(prompt="p"), S.RUNNING, 2.0, engine=EngineRef(0, "h", 1, ""), output="partial")
    again = transition(running, S.QUEUED, 3.0, not_before=4.0)
    assert again.engine is None and again.output == "" and again.attempts == 1 and again.not_before == 4.0


@pytest.mark.parametrize("terminal", [s for s in S if s.terminal])
def test_terminal_states_are_final(terminal: JobStatus) -> None:
    for target in S:
        assert not can_move(terminal, target)


@pytest.mark.parametrize(
    "source,target",
    [(S.QUEUED, S.SUCCEEDED), (S.QUEUED, S.TIMED_OUT), (S.QUEUED, S.FAILED), (S.RUNNING, S.EXPIRED),
     (S.RUNNING, S.RUNNING), (S.QUEUED, S.QUEUED)],
)
def test_invalid_transitions_raise(source: JobStatus, target: JobStatus) -> None:
    job = Job(prompt="p").with_changes(status=source)
    with pytest.raises(InvalidTransition):
        transition(job, target, 1.0)
