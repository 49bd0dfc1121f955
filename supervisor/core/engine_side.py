"""The supervisor core's engine side: engines' lives decided from drivers' reports, and admin operations.

A part of :class:`~llmsup.supervisor.core.owner.SupervisorCore` (which owns job, engine and host state); kept apart
because engines come and go for their own reasons. It reaches the job and host sides through their ports
(``parts.py``) and takes the moment it acts at from the caller.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from llmsup.engines import placement
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.engine_state import ACTIVE, GONE, Engine, EngineState, move
from llmsup.supervisor.core.now import Now
from llmsup.supervisor.core.parts import HostsPort, JobsPort, Shared
from llmsup.supervisor.core.pool import Launch
from llmsup.supervisor.core.pool_plan import PoolPlan, plans_for
from llmsup.supervisor.core.requests import EngineBusy, EngineNotFound
from llmsup.supervisor.core.standby import pick_standby
from llmsup.supervisor.core.start_failures import give_up, pool_give_up
from llmsup.supervisor.pools import DEFAULT

if TYPE_CHECKING:
    from llmsup.supervisor.core.driver import EngineDriver

log = logging.getLogger("llmsup.engines")
S = EngineState


class EngineSide:
    jobs: JobsPort  # set by the core once every part exists
    hosts: HostsPort

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.settings = shared.settings
        self.pool = shared.pool
        self.metrics = shared.metrics
        # per engine pool: what its engines load, slots, standbys, devices (set by the shell before engines start)
        self.plans: dict[str, PoolPlan] = {DEFAULT: PoolPlan(DEFAULT, self.settings, {})}
        self.last_engine_progress = float("-inf")  # monotonic: an engine reported a step of its start
        self.start_failures: list[str] = []  # load errors, in order (core/start_failures.py decides on them)
        self.pool_start_failures: dict[str, list[str]] = {}  # the same, per pool
        self._last_launch = float("-inf")
        self._controller_down = False
        self._retiring: dict[int, Engine] = {}  # gone engines whose devices are not free yet
        self._kill_reason: dict[int, str] = {}

    @property
    def driver(self) -> EngineDriver:
        return self.shared.driver

    def _drive(self, what: str, engine: Engine | None, call: Callable[[], object]) -> bool:
        return self.shared.drive(what, engine, call)

    def configure_engines(self, engine_config: dict[str, Any], gpus: int | Sequence[str] = 0) -> None:
        """Plan each pool's engines over the host's visible devices (their names, or their count)."""
        plans = plans_for(self.settings, engine_config, gpus, self.driver.can_launch)
        self.plans = {plan.name: plan for plan in plans}

    @property
    def engine_config(self) -> dict[str, Any]:
        return next(iter(self.plans.values())).engine_config

    @property
    def standby_target(self) -> int:
        return sum(plan.standby for plan in self.plans.values())

    def plan_of(self, name: str) -> PoolPlan:
        """The plan of a pool (an engine of a pool this server does not run: the first pool's)."""
        return self.plans.get(name) or next(iter(self.plans.values()))

    def expected_engines(self) -> int:
        """Serving engines the cluster should have: what we launch and keep replacing, plus what the join agents
        of the hosts that are up keep (a joined cluster: what is there)."""
        if not self.driver.can_launch:
            return len(self.pool.engines)
        return sum(p.settings.engines for p in self.plans.values()) + self.hosts.agent_engines_wanted()

    def start_give_up(self, n: int) -> str | None:
        """The load error to end the start on (``core/start_failures.py``): with one pool, when none of the ``n``
        engines can load; with several, when one pool's engines cannot, whatever the others do."""
        serving = self.pool.serving()
        if len(self.plans) == 1 or not self.driver.can_launch:
            return give_up(self.start_failures, n, len(serving))
        return pool_give_up(self.pool_start_failures, {p.name: p.settings.engines for p in self.plans.values()},
                            Counter(e.pool for e in serving))

    # launching -------------------------------------------------------------------------
    def _launch_plan(self, plan: PoolPlan, n: int) -> list[tuple[str, str]]:
        """(host, devices) of ``n`` engines of our own in a pool: spread over the launcher's hosts in turn (ssh;
        else one unnamed host), devices from each engine's rank on its host."""
        s = self.settings
        hosts = s.hosts if s.engine_launcher == "ssh" and s.hosts else [""]
        return [(hosts[rank % len(hosts)], plan.devices(rank // len(hosts))) for rank in range(n)]

    def start_engines(self, n: int, now: Now) -> None:
        """Launch the serving engines (``n`` with one pool; else each pool's own count) and the standbys, one set
        of devices each (the start log maps them)."""
        if not self.driver.can_launch:
            return
        for plan in self.plans.values():
            serving = n if len(self.plans) == 1 else plan.settings.engines
            places = self._launch_plan(plan, serving + plan.standby)
            one_host = [gpu for host, gpu in places if host == places[0][0]] if places else []  # shares: per host
            total = plan.engine_config.get("options", {}).get("gpu_memory_utilization")
            plan.memory_shares = placement.memory_shares(one_host, total or placement.DEFAULT_GPU_MEMORY_UTILIZATION)
            shown = plan.memory_shares if plan.engine_config.get("backend") == "vllm" else {}
            named = "" if plan.name == DEFAULT else f" (pool {plan.name})"
            for line, (host, _gpu) in zip(placement.describe([gpu for _, gpu in places], serving, shown), places):
                log.info("%s%s%s", line, named, f" of {host}" if host else "")
            for host, gpu in places:
                self.launch(gpu, now, host=host, pool=plan.name)

    def launch(self, gpu: str, now: Now, restarts: int = 0, host: str = "", pool: str = DEFAULT) -> None:
        """Start an engine of a pool on these devices (a launch that fails is retried by :meth:`reconcile`)."""
        set_ids: list[str] = []
        if self._drive("launch", None, lambda: set_ids.append(self.driver.launch(gpu, host))):
            self.pool.launches[set_ids[0]] = Launch(set_ids[0], gpu, now.wall, restarts, host, pool)
        self._last_launch = now.mono

    def _own(self, pool: str | None = None) -> list[Engine]:
        """The engines this supervisor launched (and replaces), of one pool or all; a join agent's, or a joined
        cluster's, are not."""
        return [e for e in self.pool if e.set_id and (pool is None or e.pool == pool)]

    def reconcile(self, now: Now) -> None:
        """Keep the engine count: launch what is missing (a failed launch, an engine set that never came up).
        Engines on their way out count as present: their replacement is launched when they are gone."""
        if (not self.driver.can_launch or self.shared.stopping or self._controller_down
                or now.mono - self._last_launch < self.settings.engine_relaunch_s):
            return
        wall = now.wall
        for launch in [la for la in self.pool.launches.values() if wall - la.since > self.settings.engine_start_timeout_s]:
            log.error("engine set %s never registered in %.0fs: forgotten", launch.set_id, wall - launch.since)
            del self.pool.launches[launch.set_id]
        for plan in self.plans.values():
            present = len(self._own(plan.name)) + sum(1 for la in self.pool.launches.values() if la.pool == plan.name) \
                + sum(1 for eid, e in self._retiring.items() if eid not in self.pool.engines and e.set_id
                      and e.pool == plan.name)
            for host, gpu in self._missing_devices(plan, plan.wanted - present):
                log.warning("engine count%s short of %d: launching one on %s%s",
                            "" if plan.name == DEFAULT else f" of pool {plan.name}", plan.wanted, gpu or "CPU",
                            f" of {host}" if host else "")
                self.launch(gpu, now, host=host, pool=plan.name)

    def _missing_devices(self, pool: PoolPlan, missing: int) -> list[tuple[str, str]]:
        if missing <= 0:
            return []
        plan = self._launch_plan(pool, pool.wanted)
        taken = Counter([(e.launched_on, e.gpu) for e in self._own(pool.name)] +
                        [(la.host, la.gpu) for la in self.pool.launches.values() if la.pool == pool.name])
        free = []
        for place in plan:  # the planned places nobody holds, first
            if taken[place]:
                taken[place] -= 1
            else:
                free.append(place)
        return (free + plan)[:missing]

    # reports -----------------------------------------------------------------------------
    def on_engine_event(self, event: ev.Report, now: Now) -> None:
        if self._on_cluster_event(event, now):
            return
        engine = self.pool.get(getattr(event, "engine_id", -1))
        if engine is None:  # a report of an engine the pool no longer holds may be of a lost host: the host side
            self.hosts.on_report_of_gone_engine(event, now)
        else:
            self._on_engine_record_event(engine, event, now)

    def _on_cluster_event(self, event: ev.Report, now: Now) -> bool:
        """Events about engines the pool does not hold (yet, or any more); True if ``event`` was one."""
        if isinstance(event, ev.EngineRegistered):
            self._drive("identify", None, lambda: self.driver.identify(event.engine_id))
        elif isinstance(event, ev.EngineIdentified):
            self._adopt(event.engine_id, event.identity, now)
        elif isinstance(event, ev.LaunchFailed):
            self.pool.launches.pop(event.set_id, None)
            log.error("engine set %s failed to start: %s", event.set_id, event.why)
        elif isinstance(event, ev.EngineRetired):
            self._replace(event.engine_id, now)
        elif isinstance(event, (ev.ControllerLost, ev.ControllerRestarted)):
            self._controller_event(event, now)
        elif isinstance(event, ev.HostHeard):
            self.hosts.on_host_heard(event, now)
        else:
            return False
        return True

    def _on_engine_record_event(self, engine: Engine, event: ev.Report, now: Now) -> None:
        if isinstance(event, ev.EngineLoaded):
            self._loaded(engine, event, now)
        elif isinstance(event, ev.EngineProgress):
            self.last_engine_progress = now.mono
            engine.log_file = event.log_file or engine.log_file
            log.info("%s starting: %s%s", engine.tag(), event.phase, f": {event.detail}" if event.detail else "")
        elif isinstance(event, ev.EngineServing):
            self._mark_ready(engine, now)
        elif isinstance(event, ev.EngineBeat):
            engine.last_beat = now.mono
            engine.rss_mb = engine.rss_mb if event.rss_mb is None else event.rss_mb
            engine.gpu_mem_mb = engine.gpu_mem_mb if event.gpu_mem_mb is None else event.gpu_mem_mb
        elif isinstance(event, ev.EngineFailed):
            self._failed(engine, event.why, now)
        elif isinstance(event, ev.EngineUnregistered):
            self.engine_lost(engine, "engine unregistered (process died or heartbeat lost)", now)
        elif isinstance(event, ev.EngineKilled):
            self._killed(engine, now)

    def _killed(self, engine: Engine, now: Now) -> None:
        self.jobs.settle_engine_jobs(engine, f"engine killed ({self._kill_reason.get(engine.id, 'killed')})", True,
                                     now)
        self.gone(engine, self._kill_reason.pop(engine.id, "killed"), release=False, now=now)

    def _failed(self, engine: Engine, why: str, now: Now) -> None:
        if engine.state is S.STARTING:
            self.start_failures.append(why)
            self.pool_start_failures.setdefault(engine.pool, []).append(why)
            log.error("%s failed to initialise: %s%s", engine.tag(), why,
                      f" (engine log: {engine.log_file})" if engine.log_file else "")
            self.kill_engine(engine, "init_failed", now)
        else:
            self.engine_lost(engine, why, now)

    def _controller_event(self, event: ev.Report, now: Now) -> None:
        if isinstance(event, ev.ControllerRestarted):
            self._controller_down = False
            self.pool.launches.clear()  # any launched on the old controller will never register
            self._last_launch = float("-inf")
            self.reconcile(now)  # every engine anew
            return
        log.error("controller lost: every engine is launched anew; running jobs go back to the queue uncharged")
        for engine in list(self.pool):
            move(engine, S.DEAD, "controller lost")
            self.jobs.settle_engine_jobs(engine, "controller lost", True, now)
            self.pool.remove(engine.id)
            self.metrics.engine_restarted("controller_lost")
        self.pool.launches.clear()
        self._retiring.clear()
        self._kill_reason.clear()
        self._controller_down = True  # no launch until the new controller runs

    def _adopt(self, engine_id: int, ident: ev.EngineIdentity, now: Now) -> None:
        launch = self.pool.launches.pop(ident.engine_set, None)
        if self.hosts.is_revoked(ident.host_key):  # never loaded: it gets no key and no job
            log.warning("engine %d registered from revoked host %s: not taken", engine_id, ident.host)
            return
        if launch is None and ident.pool and ident.pool not in self.plans:
            log.warning("engine %d says pool %r, which this server does not run (pools: %s): it serves the first",
                        engine_id, ident.pool, ", ".join(self.plans))
        plan = self.plan_of(launch.pool if launch else (ident.pool or DEFAULT))
        engine = Engine(id=engine_id, host=ident.host, host_key=ident.host_key, pid=ident.pid,
                        pid_started=ident.pid_started,
                        gpu=self._gpu_for(ident, launch, plan), set_id=launch.set_id if launch else "",
                        slots=plan.slots, batched=plan.batched, started_at=now.wall,
                        restarts=launch.restarts if launch else 0, launched_on=launch.host if launch else "",
                        pool=plan.name)
        self.pool.add(engine)
        self.hosts.host_back(self.hosts.host(ident.host_key, ident.host), f"engine {engine_id} registered")
        # one-job engines beat from a thread (a batched engine's serving loop beats by itself)
        config = dict(plan.engine_config, engine_id=engine_id, gpu=engine.gpu, beat=not plan.batched)
        if engine.gpu in plan.memory_shares:  # engines that share a GPU split its memory
            config["options"] = {**config.get("options", {}), "gpu_memory_utilization": plan.memory_shares[engine.gpu]}
        if not self._drive("load", engine, lambda: self.driver.load(engine, config)):
            self.kill_engine(engine, "init_failed", now)

    def _gpu_for(self, ident: ev.EngineIdentity, launch: Launch | None, plan: PoolPlan) -> str:
        if ident.gpu:
            return ident.gpu  # pinned when it was started: by our launch, a batch system, a join agent
        if launch is not None:
            return launch.gpu
        try:
            return placement.devices_for_rank(self.pool.on_host(ident.host_key), 0, plan.settings.gpus_per_engine)
        except ValueError:
            return ""

    def _loaded(self, engine: Engine, event: ev.EngineLoaded, now: Now) -> None:
        if engine.state is not S.STARTING:
            return
        engine.backend = dict(event.backend)
        engine.rss_mb = event.rss_mb
        engine.gpu_mem_mb = event.gpu_mem_mb
        engine.log_file = event.log_file or engine.log_file
        reported = engine.backend.get("max_num_seqs")
        if self.plan_of(engine.pool).slots_from_engine and isinstance(reported, int) and reported > 0:
            engine.slots = reported  # vLLM's own default for the engine's device
        reported = engine.backend.get("max_num_seqs")
        if self.plan_of(engine.pool).slots_from_engine and isinstance(reported, int) and reported > 0:
            engine.slots = reported  # vLLM's own default for the engine's device
        log.info("%s loaded in %.2fs (%s), engine log %s", engine.tag(), event.load_s, engine.backend.get("backend"),
                 engine.log_file or "-")
        if engine.backend.get("tiny_random_model"):
            log.warning("%s serves the tiny local model %s: RANDOM weights, its text is random (name a model "
                        "with --model)", engine.tag(), engine.backend.get("model"))
        if engine.batched:
            if not self._drive("start_serving", engine, lambda: self.driver.start_serving(engine)):
                self.kill_engine(engine, "init_failed", now)  # ready when its loop says hello
        else:
            self._mark_ready(engine, now)

    def _mark_ready(self, engine: Engine, now: Now) -> None:
        if engine.state is not S.STARTING:
            return
        engine.last_beat = now.mono
        if self._wants_standby(engine):
            move(engine, S.STANDBY, "ready, kept as a standby")
            return
        move(engine, S.IDLE, "ready")
        self.shared.hooks.wake_dispatch()

    def _wants_standby(self, engine: Engine) -> bool:
        if not engine.set_id:
            return self.hosts.agent_wants_standby(engine)
        plan = self.plan_of(engine.pool)
        own = [e for e in self._own(engine.pool) if e is not engine]
        active = sum(1 for e in own if e.state in ACTIVE)
        standbys = sum(1 for e in own if e.state is S.STANDBY)
        return self.driver.can_launch and active >= plan.settings.engines and standbys < plan.standby

    def _promote_standby(self, lost: Engine) -> None:
        """A standby takes the place of an engine that is going (it keeps its own devices)."""
        if self.shared.stopping:
            return
        standby = pick_standby([e for e in self.pool if e.pool == lost.pool], lost.host_key)
        if standby is None:
            return
        move(standby, S.IDLE, f"promoted in place of engine {lost.id}")
        self.metrics.standby_promotions.inc()
        self.shared.hooks.wake_dispatch()

    # losing, killing, recycling, replacing ------------------------------------------------------
    def take_out(self, engine: Engine, target: EngineState, why: str) -> None:
        """Take a going engine out of service; a standby takes its place (unless it was one)."""
        was_standby = engine.state is S.STANDBY
        move(engine, target, why)
        if not was_standby:
            self._promote_standby(engine)

    def engine_lost(self, engine: Engine, why: str, now: Now) -> None:
        """The engine died under us (or left the cluster): its jobs settle, a replacement is launched."""
        if self.pool.get(engine.id) is not engine or engine.state is S.RESTARTING:
            return  # handled already, or a kill / recycle in progress settles it
        log.warning("%s lost: %s", engine.tag(), why)
        self.take_out(engine, S.DEAD, f"lost: {why}")  # first: nothing new goes to it, nothing recycles it
        self.jobs.settle_engine_jobs(engine, why, False, now)
        self.gone(engine, "lost", release=False, now=now)

    def kill_engine(self, engine: Engine, reason: str, now: Now) -> None:
        """SIGKILL the engine (its jobs settle when the driver reports it killed), then replace it."""
        if engine.state in GONE:
            return
        self.take_out(engine, S.RESTARTING, f"kill: {reason}")
        self._kill_reason[engine.id] = reason
        if not self._drive("kill", engine, lambda: self.driver.kill(engine)):
            self._killed(engine, now)  # take it as gone: retire kills and stops its set once more

    def recycle(self, engine: Engine, why: str, now: Now) -> None:
        """Release the backend, stop the engine, start a fresh one on the same devices."""
        if engine.state in GONE:
            return
        self.take_out(engine, S.RESTARTING, f"recycle: {why}")
        self.gone(engine, "recycled", release=True, now=now)

    def maybe_recycle(self, engine: Engine, now: Now) -> None:
        """Recycle between jobs (a busy batched engine drains first, then recycles when empty)."""
        s = self.settings
        if self.shared.stopping or engine.state in GONE:
            return
        if engine.recycle_why is None:
            if s.max_jobs_per_engine and engine.jobs_done >= s.max_jobs_per_engine:
                engine.recycle_why = f"{engine.jobs_done} jobs done (max_jobs_per_engine={s.max_jobs_per_engine})"
            elif s.max_engine_rss_mb and engine.rss_mb > s.max_engine_rss_mb:
                engine.recycle_why = f"RSS {engine.rss_mb:.0f} MB > max_engine_rss_mb={s.max_engine_rss_mb:.0f}"
        if engine.recycle_why is None:
            return
        if engine.jobs:
            move(engine, S.DRAINING, f"to recycle when its jobs end: {engine.recycle_why}")
        else:
            self.recycle(engine, engine.recycle_why, now)

    def gone(self, engine: Engine, reason: str, release: bool, now: Now) -> None:
        """Hand the engine to the driver to take away; a released one stays in view (restarting) until then."""
        if not release:
            move(engine, S.DEAD, reason)
            self.pool.remove(engine.id)
        self._retiring[engine.id] = engine
        self.metrics.engine_restarted(reason)
        if not self._drive("retire", engine, lambda: self.driver.retire(engine, release=release)):
            self._replace(engine.id, now)

    def _replace(self, engine_id: int, now: Now) -> None:
        engine = self._retiring.pop(engine_id, None)
        if engine is None:
            return
        if engine.state is not S.DEAD:
            move(engine, S.DEAD, "retired")
            self.pool.remove(engine.id)
        if not engine.set_id:
            log.warning("%s gone: whoever started it (its host's join agent, or the cluster's owner) replaces it",
                        engine.tag())
        elif self.driver.can_launch and not self.shared.stopping and not self.hosts.is_revoked(engine.host_key):
            self.launch(engine.gpu, now, restarts=engine.restarts + 1, host=engine.launched_on, pool=engine.pool)

    def check_beats(self, now: Now) -> None:
        """A batched engine whose serving loop stopped beating is lost."""
        limit = self.settings.engine_beat_timeout_s
        for engine in self.pool:
            if engine.batched and engine.state not in GONE and engine.state is not S.STARTING \
                    and now.mono - engine.last_beat > limit:
                self.kill_engine(engine, f"no heartbeat for {now.mono - engine.last_beat:.1f}s", now)

    # admin operations ----------------------------------------------------------------------------
    def engine_views(self, now: Now) -> list[dict[str, Any]]:
        return [e.view(now.mono) for e in sorted(self.pool.engines.values(), key=lambda e: e.id)]

    def find_engine(self, engine_id: int) -> Engine:
        engine = self.pool.get(engine_id)
        if engine is None:
            raise EngineNotFound(engine_id)
        return engine

    def interrupt_engine(self, engine_id: int, now: Now) -> list[str]:
        """Interrupt every job on the engine (they end cancelled); the engine stays."""
        engine = self.find_engine(engine_id)
        ids = list(engine.jobs)
        for jid in ids:
            self.jobs.cancel(jid, now, note=f"interrupted by admin on engine {engine_id}")
        return ids

    def restart_engine(self, engine_id: int, now: Now) -> list[str]:
        """Replace the engine: recycled cleanly when idle, killed when busy (its jobs re-queued, uncharged).
        Raises EngineBusy when it is already on its way out."""
        engine = self.find_engine(engine_id)
        if engine.state in GONE:
            raise EngineBusy(engine_id, engine.state.value)
        jobs = list(engine.jobs)
        if jobs or engine.state is S.STARTING:
            self.kill_engine(engine, "admin_restart", now)
        else:
            self.recycle(engine, "admin_restart", now)
        return jobs

    def drain_engine(self, engine_id: int, drain: bool = True) -> None:
        """A draining engine finishes its jobs and takes no new ones (until undrained)."""
        engine = self.find_engine(engine_id)
        if drain and engine.state in (S.IDLE, S.BUSY):
            move(engine, S.DRAINING, "drained by admin")
        elif not drain and engine.state is S.DRAINING and engine.recycle_why is None:
            move(engine, S.BUSY if engine.jobs else S.IDLE, "undrained by admin")
            self.shared.hooks.wake_dispatch()
