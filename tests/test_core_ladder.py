"""The supervisor core and its escalation ladder on a fake cluster with a fake clock (no processes, no sleeps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_settings
from fakes import FakeClock, FakeDriver
from llmsup.engines.messages import JobResult
from llmsup.supervisor.core import ladder
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.engine_state import Engine, EngineState, EngineStateError, move
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.owner import SupervisorCore
from llmsup.supervisor.core.requests import EngineBusy, JobRequest
from llmsup.supervisor.store import MemoryStore

S = JobStatus
E = EngineState
GRACE = ladder.Grace(interrupt_s=0.25, kill_s=1.0)
pytestmark = pytest.mark.timeout(10)


def make_core(tmp_path: Path, engines: int = 1, slots: int | None = None, **settings: object) -> tuple[
        SupervisorCore, FakeDriver, FakeClock]:
    clock, driver = FakeClock(), FakeDriver()
    core = SupervisorCore(make_settings(tmp_path, engines=engines, interrupt_grace_s=0.25, kill_grace_s=1.0,
                                        slots_per_engine=slots, **settings),
                          MemoryStore(), driver)
    core.configure_engines({"backend": "sim"})
    core.start_engines(engines, clock.now)
    for i, (_, set_id, _gpu) in enumerate(driver.verbs("launch")):
        bring_up(core, i, set_id, clock)
    return core, driver, clock


def bring_up(core: SupervisorCore, engine_id: int, set_id: str, clock: FakeClock) -> Engine:
    core.report(ev.EngineRegistered(engine_id), clock.now)
    ident = ev.EngineIdentity(host="h", host_key="h|boot", pid=1000 + engine_id, gpu="", engine_set=set_id)
    core.report(ev.EngineIdentified(engine_id, ident), clock.now)
    core.report(ev.EngineLoaded(engine_id, {"backend": "sim"}), clock.now)
    engine = core.find_engine(engine_id)
    if engine.batched:
        core.report(ev.EngineServing(engine_id), clock.now)
    return engine


def run_one(core: SupervisorCore, clock: FakeClock, deadline_s: float = 2.0) -> str:
    job = core.submit(JobRequest(prompt="p", deadline_s=deadline_s), clock.now).job
    assert core.dispatch_ready(clock.now) == 1
    run = core.running_job(job.id)
    assert run is not None
    core.report(ev.TaskStarted(run.key), clock.now)
    core.report(ev.TokenPiece(run.key, 0, "partial "), clock.now)
    return job.id


def key_of(core: SupervisorCore, job_id: str) -> str:
    run = core.running_job(job_id)
    assert run is not None
    return run.key


def tick_to(core: SupervisorCore, clock: FakeClock, when: float) -> None:
    clock.mono = when
    core.tick(clock.now)


# the pure ladder -----------------------------------------------------------------------------
def test_ladder_waits_for_the_task_to_start_before_the_sigint() -> None:
    esc, steps = ladder.ask(S.TIMED_OUT, batched=False, task_started=False, now=10.0, grace=GRACE)
    assert steps == [] and esc.rung is ladder.Rung.WAITING_START
    esc, steps = ladder.on_task_started(esc, 10.1, GRACE)
    assert steps == [ladder.Step.SIGINT] and esc.since == 10.1


def test_ladder_sigint_probe_sigkill_on_time() -> None:
    esc, steps = ladder.ask(S.TIMED_OUT, False, True, 10.0, GRACE)
    assert steps == [ladder.Step.SIGINT] and esc.rung is ladder.Rung.SIGNALLING
    esc, _ = ladder.on_delivered(esc, 10.01, GRACE)
    assert esc.wake_at == pytest.approx(10.25)
    assert ladder.due(esc, 10.2, GRACE)[1] == []  # not yet
    esc, steps = ladder.due(esc, 10.25, GRACE)
    assert steps == [ladder.Step.PROBE] and esc.wake_at == pytest.approx(11.0)
    esc, steps = ladder.due(esc, 11.0, GRACE)
    assert steps == [ladder.Step.SIGKILL] and esc.rung is ladder.Rung.KILLED
    assert ladder.due(esc, 99.0, GRACE)[1] == []  # one SIGKILL


def test_ladder_undelivered_sigint_ends_in_sigkill() -> None:
    esc, _ = ladder.ask(S.CANCELLED, False, True, 10.0, GRACE)
    esc, steps = ladder.due(esc, 11.0, GRACE)
    assert steps == [ladder.Step.SIGKILL]


def test_batched_ladder_aborts_a_cancel_and_sends_one_sigint_per_episode() -> None:
    esc, steps = ladder.ask(S.CANCELLED, True, True, 10.0, GRACE)
    assert steps == [ladder.Step.ABORT]
    esc, steps = ladder.due(esc, 10.25, GRACE, engine_sigint_at=None)
    assert steps == [ladder.Step.SIGINT]
    other, _ = ladder.ask(S.TIMED_OUT, True, True, 10.1, GRACE)
    _, steps = ladder.due(other, 10.35, GRACE, engine_sigint_at=10.25)
    assert steps == []  # the engine had its SIGINT for this episode
    assert ladder.due(esc, 11.0, GRACE)[1] == [ladder.Step.SIGKILL]


# the core on a fake cluster ---------------------------------------------------------------------
def test_engines_come_up_through_reports(tmp_path: Path) -> None:
    core, driver, _ = make_core(tmp_path, engines=2)
    assert [c[0] for c in driver.calls].count("launch") == 2
    assert {e.state for e in core.pool} == {E.IDLE}
    assert core.pool.launches == {}  # every launch registered


def test_deadline_sigint_reply_settles_timed_out_and_reuses_the_engine(tmp_path: Path) -> None:
    core, driver, clock = make_core(tmp_path)
    job_id = run_one(core, clock, deadline_s=2.0)
    key = key_of(core, job_id)
    tick_to(core, clock, clock.mono + 1.99)
    assert driver.verbs("sigint") == []
    tick_to(core, clock, clock.mono + 0.01)
    assert driver.verbs("sigint") == [("sigint", 0, key)]
    assert core.find_engine(0).state is E.INTERRUPTING
    core.report(ev.SigintDelivered(key), clock.now)
    core.report(ev.JobReply(key, result=JobResult("interrupted", "partial ", 1)), clock.now)
    job = core.get(job_id)
    assert job.status is S.TIMED_OUT and job.output == "partial " and job.finish_reason == "deadline"
    assert core.find_engine(0).state is E.IDLE and driver.verbs("kill") == []


def test_lost_reply_is_proved_by_the_probe(tmp_path: Path) -> None:
    core, driver, clock = make_core(tmp_path)
    job_id = run_one(core, clock, deadline_s=1.0)
    key = key_of(core, job_id)
    tick_to(core, clock, clock.mono + 1.0)
    core.report(ev.SigintDelivered(key), clock.now)
    tick_to(core, clock, clock.mono + 0.25)
    assert driver.verbs("probe") == [("probe", 0, key)]
    core.report(ev.ProbeAnswered(key), clock.now)
    job = core.get(job_id)
    assert job.status is S.TIMED_OUT and "reply lost" in (job.error or "") and job.output == "partial "
    assert core.find_engine(0).state is E.IDLE


def test_sigint_proof_hang_is_killed_at_kill_grace_and_replaced_on_its_gpu(tmp_path: Path) -> None:
    core, driver, clock = make_core(tmp_path)
    job_id = run_one(core, clock, deadline_s=1.0)
    key = key_of(core, job_id)
    start = clock.mono
    tick_to(core, clock, start + 1.0)
    core.report(ev.SigintDelivered(key), clock.now)
    tick_to(core, clock, start + 1.25)
    tick_to(core, clock, start + 1.99)
    assert driver.verbs("kill") == []
    tick_to(core, clock, start + 2.0)
    assert driver.verbs("kill") == [("kill", 0, None)]
    engine = core.find_engine(0)
    assert engine.state is E.RESTARTING and core.get(job_id).status is S.RUNNING
    core.report(ev.EngineKilled(0), clock.now)
    job = core.get(job_id)
    assert job.status is S.TIMED_OUT and "engine killed" in (job.error or "")
    assert engine.state is E.DEAD and driver.verbs("retire") == [("retire", 0, False)]
    core.report(ev.EngineRetired(0), clock.now)
    launches = driver.verbs("launch")
    assert len(launches) == 2 and launches[-1][2] == engine.gpu
    replacement = bring_up(core, 7, launches[-1][1], clock)
    assert replacement.restarts == 1 and replacement.state is E.IDLE
    assert core.metrics.engine_restarts.labels("sigint_failed")._value.get() == 1


def test_a_late_reply_after_the_kill_changes_nothing(tmp_path: Path) -> None:
    core, _, clock = make_core(tmp_path)
    job_id = run_one(core, clock, deadline_s=1.0)
    key = key_of(core, job_id)
    tick_to(core, clock, clock.mono + 1.0)
    tick_to(core, clock, clock.mono + 1.0)  # SIGINT never confirmed: SIGKILL
    core.report(ev.EngineKilled(0), clock.now)
    core.report(ev.JobReply(key, result=JobResult("completed", "late", 1)), clock.now)
    assert core.get(job_id).status is S.TIMED_OUT


def test_engine_lost_requeues_its_job_charged_and_launches_a_replacement(tmp_path: Path) -> None:
    core, driver, clock = make_core(tmp_path)
    job_id = run_one(core, clock)
    core.report(ev.EngineUnregistered(0), clock.now)
    job = core.get(job_id)
    assert job.status is S.QUEUED and job.lost_engines == (0,) and job.attempts == 1
    assert core.pool.get(0) is None and driver.verbs("retire") == [("retire", 0, False)]


def test_engine_states_move_only_by_the_table(tmp_path: Path) -> None:
    core, _, clock = make_core(tmp_path)
    engine = core.find_engine(0)
    with pytest.raises(EngineStateError):
        move(engine, E.STARTING, "back to start")
    core.restart_engine(0, clock.now)
    assert engine.state is E.RESTARTING
    with pytest.raises(EngineBusy):
        core.restart_engine(0, clock.now)  # a double click: one replacement, 409 for the second


def test_recycle_after_n_jobs_waits_for_the_job_then_releases(tmp_path: Path) -> None:
    core, driver, clock = make_core(tmp_path, max_jobs_per_engine=1)
    job_id = run_one(core, clock)
    core.report(ev.JobReply(key_of(core, job_id), result=JobResult("completed", "x", 1)),
                clock.now)
    assert core.get(job_id).status is S.SUCCEEDED
    assert driver.verbs("retire") == [("retire", 0, True)]  # released, not killed
    core.report(ev.EngineRetired(0), clock.now)
    assert len(driver.verbs("launch")) == 2


def test_batched_engine_that_stops_beating_is_replaced(tmp_path: Path) -> None:
    core, driver, clock = make_core(tmp_path, slots=4, engine_beat_timeout_s=3.0)
    engine = core.find_engine(0)
    core.report(ev.EngineBeat(0, rss_mb=10.0), clock.now)
    clock.advance(2.9)
    core.check_beats(clock.now)
    assert driver.verbs("kill") == []
    clock.advance(0.2)
    core.check_beats(clock.now)
    assert driver.verbs("kill") == [("kill", 0, None)] and engine.state is E.RESTARTING


def test_batched_neighbours_of_a_killed_job_go_back_uncharged(tmp_path: Path) -> None:
    core, driver, clock = make_core(tmp_path, slots=4)
    runaway = run_one(core, clock, deadline_s=1.0)
    neighbour = run_one(core, clock, deadline_s=30.0)
    tick_to(core, clock, clock.mono + 1.0)
    tick_to(core, clock, clock.mono + 0.25)
    assert driver.verbs("sigint") == [("sigint", 0, key_of(core, runaway))]
    tick_to(core, clock, clock.mono + 0.75)
    assert driver.verbs("kill") == [("kill", 0, None)]
    core.report(ev.EngineKilled(0), clock.now)
    assert core.get(runaway).status is S.TIMED_OUT
    requeued = core.get(neighbour)
    assert requeued.status is S.QUEUED and requeued.attempts == 0


# warm standbys ------------------------------------------------------------------------------------
def test_a_hang_only_sigkill_ends_is_recovered_by_promoting_the_standby(tmp_path: Path) -> None:
    core, driver, clock = make_core(tmp_path, engines=1, standby=1)
    serving, standby = core.find_engine(0), core.find_engine(1)
    assert (serving.state, standby.state) == (E.IDLE, E.STANDBY)
    assert [e.id for e in core.pool.serving()] == [0]  # a standby is not a serving engine
    job_id = run_one(core, clock, deadline_s=1.0)
    tick_to(core, clock, clock.mono + 1.0)
    tick_to(core, clock, clock.mono + 1.0)  # no reply, no probe answer: SIGKILL
    assert driver.verbs("kill") == [("kill", 0, None)]
    assert standby.state is E.IDLE  # promoted at the kill, before the killed engine is even gone
    assert core.metrics.standby_promotions._value.get() == 1
    nxt = core.submit(JobRequest(prompt="next"), clock.now).job
    assert core.dispatch_ready(clock.now) == 1 and core.get(nxt.id).engine.id == 1
    core.report(ev.EngineKilled(0), clock.now)
    assert core.get(job_id).status is S.TIMED_OUT
    core.report(ev.EngineRetired(0), clock.now)
    launch = driver.verbs("launch")[-1]
    assert launch[2] == serving.gpu  # the new engine goes where the killed one was
    assert bring_up(core, 2, launch[1], clock).state is E.STANDBY


def test_a_standby_that_dies_is_replaced_and_promotes_nothing(tmp_path: Path) -> None:
    core, driver, clock = make_core(tmp_path, engines=1, standby=1)
    core.report(ev.EngineUnregistered(1), clock.now)
    assert core.find_engine(0).state is E.IDLE and core.pool.get(1) is None
    core.report(ev.EngineRetired(1), clock.now)
    assert bring_up(core, 2, driver.verbs("launch")[-1][1], clock).state is E.STANDBY
    assert core.metrics.standby_promotions._value.get() == 0


def test_recycling_swaps_in_the_standby(tmp_path: Path) -> None:
    core, driver, clock = make_core(tmp_path, engines=1, standby=1, max_jobs_per_engine=1)
    job_id = run_one(core, clock)
    core.report(ev.JobReply(key_of(core, job_id), result=JobResult("completed", "x", 1)),
                clock.now)
    assert core.find_engine(1).state is E.IDLE and core.find_engine(0).state is E.RESTARTING
    assert driver.verbs("retire") == [("retire", 0, True)]


# faults injected at each step: the job still ends, the supervisor goes on ----------------------------------
class Faulty(FakeDriver):
    """A driver whose chosen verbs raise, as an OS error or a driver bug would."""

    def __init__(self, *failing: str) -> None:
        super().__init__()
        self.failing = set(failing)

    def __getattribute__(self, name: str):  # type: ignore[no-untyped-def]
        if name in object.__getattribute__(self, "failing"):
            def fail(*args: object, **kwargs: object) -> None:
                raise PermissionError(f"injected: {name}")
            return fail
        return object.__getattribute__(self, name)


@pytest.mark.parametrize("failing", [("sigint",), ("probe",), ("sigint", "probe"), ("kill",), ("retire",),
                                     ("sigint", "probe", "kill", "retire")])
def test_a_failing_ladder_step_still_ends_the_job(tmp_path: Path, failing: tuple[str, ...]) -> None:
    core, _, clock = make_core(tmp_path)
    faulty = Faulty(*failing)
    core.driver = faulty
    job_id = run_one(core, clock, deadline_s=1.0)
    tick_to(core, clock, clock.mono + 1.0)
    if "sigint" not in failing:
        core.report(ev.SigintDelivered(key_of(core, job_id)), clock.now)
    for _ in range(8):
        tick_to(core, clock, clock.mono + 0.25)
    if "kill" not in failing:
        core.report(ev.EngineKilled(0), clock.now)
    job = core.get(job_id)
    assert job.status is S.TIMED_OUT and job.output == "partial ", job
    assert core.pool.get(0) is None  # gone, and its replacement launched
    if "retire" not in failing:
        core.report(ev.EngineRetired(0), clock.now)
    assert faulty.verbs("launch") or "launch" in failing
    assert core.metrics.driver_errors.labels(failing[0])._value.get() >= 1


def test_a_failing_dispatch_requeues_the_job_uncharged(tmp_path: Path) -> None:
    core, _, clock = make_core(tmp_path)
    core.driver = Faulty("dispatch")
    job = core.submit(JobRequest(prompt="p"), clock.now).job
    core.dispatch_ready(clock.now)
    job = core.get(job.id)
    assert job.status is S.QUEUED and job.attempts == 0


def test_a_failed_launch_is_made_up_for(tmp_path: Path) -> None:
    core, driver, clock = make_core(tmp_path, engines=1)
    core.report(ev.EngineUnregistered(0), clock.now)
    core.driver = Faulty("launch")
    core.report(ev.EngineRetired(0), clock.now)
    assert core.pool.launches == {}
    core.driver = driver
    clock.advance(5.0)
    core.reconcile(clock.now)
    assert len(core.pool.launches) == 1
    clock.advance(10.0)
    core.reconcile(clock.now)
    assert len(core.pool.launches) == 1  # not twice


def test_a_launch_that_never_registers_is_forgotten_and_made_up_for(tmp_path: Path) -> None:
    core, driver, clock = make_core(tmp_path, engines=1, engine_start_timeout_s=30.0)
    core.report(ev.EngineUnregistered(0), clock.now)
    core.report(ev.EngineRetired(0), clock.now)
    assert len(core.pool.launches) == 1 and len(driver.verbs("launch")) == 2
    clock.advance(29.0)
    core.reconcile(clock.now)
    assert len(driver.verbs("launch")) == 2  # still within the start timeout
    clock.advance(2.0)
    core.reconcile(clock.now)
    assert len(driver.verbs("launch")) == 3 and len(core.pool.launches) == 1


def test_controller_loss_requeues_uncharged_and_relaunches_after_the_restart(tmp_path: Path) -> None:
    core, driver, clock = make_core(tmp_path, engines=2)
    job_id = run_one(core, clock)
    core.report(ev.ControllerLost(), clock.now)
    job = core.get(job_id)
    assert job.status is S.QUEUED and job.attempts == 0 and not list(core.pool)
    core.reconcile(clock.now)
    assert len(driver.verbs("launch")) == 2  # nothing while the controller restarts
    core.report(ev.ControllerRestarted(), clock.now)
    assert len(driver.verbs("launch")) == 4


def test_admin_engine_list_shows_launches_in_flight_and_restarts(tmp_path: Path) -> None:
    from llmsup.supervisor.service import Supervisor
    from llmsup.web.routes_admin import engine_list

    clock, driver = FakeClock(), FakeDriver()
    sup = Supervisor(make_settings(tmp_path, engines=1), MemoryStore(), clock=lambda: clock.wall,
                     mono=lambda: clock.mono)
    sup.core.driver = driver
    sup.core.configure_engines({"backend": "sim"})
    sup.core.start_engines(1, clock.now)
    bring_up(sup.core, 0, driver.verbs("launch")[0][1], clock)
    sup.report(ev.EngineUnregistered(0))
    sup.report(ev.EngineRetired(0))
    listed = engine_list(sup)
    (set_id,) = sup.pool.launches
    assert [(s.engine_set, s.gpu) for s in listed.starting] == [(set_id, "")] and listed.engines == []
    bring_up(sup.core, 5, set_id, clock)
    listed = engine_list(sup)
    assert listed.starting == [] and [(e.id, e.restarts) for e in listed.engines] == [(5, 1)]
