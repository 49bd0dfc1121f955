"""The supervisor core's host side: which hosts engines run on, and what happens when one drops off the network.

A part of :class:`~llmsup.supervisor.core.owner.SupervisorCore` (which owns job, engine and host state). A host is known
from its engines' identities (hostname + boot id) and, when a join agent runs its engines, from the agent's
beats on the control channel. Every engine says it lives by beats on the token stream (a thread in one-job
engines, the serving loop in batched ones), so a host is *lost* when neither its engines nor its agent have
been heard for ``host_loss_s`` (the server's own host never is: it cannot lose itself). Then its jobs go back
to the queue NOT charged an attempt (the host's link failed, not the job) and run elsewhere; a job already past
its deadline or being interrupted ends with what it streamed; its engines are taken out (a standby takes a
place, engines this server launched are launched anew). Their keys die with them: an answer that arrives later
from the lost host finds no job and is dropped, so no job ends twice. When the host is heard again, its engines
that were taken out are *fenced*: its agent kills them and starts new ones in their place (an old job must not go
on there), and the new engines register as any engine does.

A join agent beats under a key of its own (``supervisor/cluster/curve.py``), and is bound to the first host it
beats for: a beat for another host, or for a host whose own agent still beats, is refused, logged and counted
(``llmsup_refused_peers_total{reason="claim"}``). An admin can *revoke* a host (``revoke``): its engines leave as
a lost host's do (their jobs run again elsewhere, not charged an attempt), its agent is told to stop, its and its
engines' keys are revoked, and nothing of that host is admitted again (its agent, its engines' registrations).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.engine_state import ACTIVE, GONE, Engine, EngineState
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.now import Now
from llmsup.supervisor.core.outcomes import Settlement, lost
from llmsup.supervisor.core.parts import EnginesPort, JobsPort, Shared
from llmsup.supervisor.core.requests import HostNotFound, HostNotRevocable

if TYPE_CHECKING:
    from llmsup.supervisor.core.running import RunningJob

log = logging.getLogger("llmsup.hosts")
S = EngineState


@dataclass(eq=False)
class Host:
    """The supervisor's live record of one host (like :class:`Engine`, it changes while the host lives)."""

    key: str  # host_key: hostname + boot id
    name: str
    agent: str = ""  # its join agent's identity on the control channel ("" : no agent)
    gpus: int | None = None  # as its agent reports them
    engines_wanted: int = 0  # serving engines its agent keeps
    standby_wanted: int = 0
    agent_pids: tuple[int, ...] = ()  # the agent's engine processes at its last beat
    heard_at: float | None = None  # monotonic: the agent's last beat
    lost_at: float | None = None  # monotonic: when it was taken as lost (None: it is not)
    losses: int = 0
    fenced: dict[int, Engine] = field(default_factory=dict)  # engines taken out while it was cut off, still to kill
    revoked: bool = False  # by an admin: nothing of it is admitted again

    def view(self, engines: list[Engine], now: float, local: bool) -> dict[str, Any]:
        last = self.last_heard(engines)
        return {
            "host": self.name, "host_key": self.key, "local": local, "agent": bool(self.agent),
            "state": "revoked" if self.revoked else "lost" if self.lost_at is not None else "up", "gpus": self.gpus,
            "engines_wanted": self.engines_wanted if self.agent else None,
            "standby_wanted": self.standby_wanted if self.agent else None,
            "silent_s": round(now - last, 3) if last is not None else None, "losses": self.losses,
            "lost_s": round(now - self.lost_at, 3) if self.lost_at is not None else None,
            "fenced": sorted(self.fenced),
        }

    def last_heard(self, engines: list[Engine]) -> float | None:
        """The last sign of life from the host: its agent's beat, or any engine's that has started serving."""
        times = [e.last_beat for e in engines if e.state not in GONE and e.state is not S.STARTING]
        if self.heard_at is not None:
            times.append(self.heard_at)
        return max(times) if times else None


class HostSide:
    jobs: JobsPort  # set by the core once every part exists
    engines: EnginesPort

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.settings = shared.settings
        self.pool = shared.pool
        self.hosts: dict[str, Host] = {}
        self._hosts_checked_at: float | None = None
        self._refusals_logged: set[tuple[str, str]] = set()

    def host(self, key: str, name: str) -> Host:
        host = self.hosts.get(key)
        if host is None:
            host = self.hosts[key] = Host(key, name)
        return host

    def engines_on(self, host: Host) -> list[Engine]:
        return [e for e in self.pool if e.host_key == host.key]

    def agent_engines_wanted(self) -> int:
        """Serving engines the join agents of the hosts that are up keep."""
        return sum(h.engines_wanted for h in self.hosts.values() if h.agent and h.lost_at is None and not h.revoked)

    def is_revoked(self, host_key: str) -> bool:
        host = self.hosts.get(host_key)
        return host is not None and host.revoked

    # reports ------------------------------------------------------------------------------------
    def _claim_refused(self, event: ev.HostHeard, now: Now) -> str | None:
        """Why this agent may not beat for this host (None: it may)."""
        host = self.hosts.get(event.host_key)
        if host is not None and host.revoked:
            return "revoked"
        if any(h.agent == event.agent and h.key != event.host_key for h in self.hosts.values()):
            return "claim"  # an agent speaks for the one host it first beat for
        if host is None or not host.agent or host.agent == event.agent or host.lost_at is not None:
            return None
        # another agent holds the host: a new one takes it over only once the old one has fallen silent
        silent = host.heard_at is None or now.mono - host.heard_at > self.settings.host_loss_timeout_s
        return None if silent else "claim"

    def on_host_heard(self, event: ev.HostHeard, now: Now) -> None:
        refused = self._claim_refused(event, now)
        if refused is not None:
            self.shared.metrics.refused_peers.labels(refused).inc()
            if (event.agent, refused) not in self._refusals_logged and len(self._refusals_logged) < 1000:
                self._refusals_logged.add((event.agent, refused))
                log.warning("refused a beat of join agent %s for host %s (%s): %s", event.agent, event.host,
                            event.host_key, "the host is revoked" if refused == "revoked" else
                            "that key belongs to another host's agent, or the host's own agent still beats")
            return
        host = self.host(event.host_key, event.host)
        if host.agent != event.agent:
            log.info("host %s joined: agent %s, %d engines (%d standby), %d GPUs", event.host, event.agent,
                     event.engines, event.standby, event.gpus)
        host.agent, host.name, host.gpus = event.agent, event.host, event.gpus
        host.engines_wanted, host.standby_wanted, host.agent_pids = event.engines, event.standby, event.pids
        host.heard_at = now.mono
        self.host_back(host, "its agent beats again")
        self._fence(host)

    def on_report_of_gone_engine(self, event: ev.Report, now: Now) -> None:
        """A report about an engine the pool does not hold: one taken out with a lost host. Its beat: the host is
        heard again. The controller dropping it: without an agent there nothing can reach it any more (an ssh
        launcher's set is stopped by the launcher); with one, the agent's beats say when it is gone."""
        engine_id = getattr(event, "engine_id", -1)
        for host in self.hosts.values():
            if engine_id not in host.fenced:
                continue
            if isinstance(event, ev.EngineBeat):
                self.host_back(host, f"engine {engine_id} beats again")
                self._fence(host)
            elif isinstance(event, ev.EngineUnregistered) and not host.agent:
                del host.fenced[engine_id]
            return

    def host_back(self, host: Host, why: str) -> None:
        if host.lost_at is not None:
            log.warning("host %s is back (%s): %d engines taken out to be replaced", host.name, why,
                        len(host.fenced))
            host.lost_at = None

    def _fence(self, host: Host) -> None:
        """Have the engines taken out while the host was cut off killed (their replacements come as new engines)."""
        if not host.fenced:
            return
        if host.agent:  # its agent kills and restarts them; forget those it no longer runs
            alive = set(host.agent_pids)
            host.fenced = {eid: e for eid, e in host.fenced.items() if e.pid in alive}
            if host.fenced:
                pids = tuple(sorted(e.pid for e in host.fenced.values()))
                driver = self.shared.driver
                self.shared.drive("fence", None, lambda: driver.order_host(host.agent, fence=pids))
            return
        for engine in host.fenced.values():  # no agent: through the nanny (its set, if launched here, is stopped)
            self.shared.drive("fence", engine, partial(self.shared.driver.kill, engine))
        host.fenced.clear()

    # losing a host --------------------------------------------------------------------------------
    def check_hosts(self, now: Now) -> None:
        """Take as lost every other host none of whose engines (nor its agent) was heard for host_loss_s.

        Not right after the supervisor itself stood still (a check comes every fraction of a second): the beats
        that arrived meanwhile are still unread, and silence would be our own."""
        limit = self.settings.host_loss_timeout_s
        previous, self._hosts_checked_at = self._hosts_checked_at, now.mono
        if previous is not None and now.mono - previous > limit / 2:
            log.warning("the supervisor stood still for %.1fs: no host is judged lost before its beats are read",
                        now.mono - previous)
            return
        for host in list(self.hosts.values()):
            if host.key == self.shared.driver.local_key or host.lost_at is not None or host.revoked:
                continue
            engines = [e for e in self.engines_on(host) if e.state not in GONE]
            last = host.last_heard(engines)
            if engines and last is not None and now.mono - last > limit:
                self.host_lost(host, now, now.mono - last)

    def host_lost(self, host: Host, now: Now, silent_s: float) -> None:
        engines = [e for e in self.engines_on(host) if e.state not in GONE]
        jobs = sum(len(e.jobs) for e in engines)
        log.error("host %s lost: nothing heard from it for %.1fs (host_loss_s=%.1f); %d engines taken out, %d jobs "
                  "re-run elsewhere (not charged an attempt)", host.name, silent_s, self.settings.host_loss_timeout_s,
                  len(engines), jobs)
        host.lost_at, host.losses = now.mono, host.losses + 1
        for engine in self.engines_on(host):  # those being killed too: the kill cannot reach them now
            if engine.state is not S.DEAD:
                host.fenced[engine.id] = engine
        for engine in engines:
            self.engines.take_out(engine, S.DEAD, f"host {host.name} lost")  # first: nothing new goes to it
            for job_id in list(engine.jobs):
                run = self.jobs.running(job_id)
                if run is not None:
                    self.jobs.settle(run, self._cut_off(run, host, now.mono), now)
            self.engines.gone(engine, "host_lost", release=False, now=now)

    def _cut_off(self, run: RunningJob, host: Host, now: float, how: str = "lost") -> Settlement:
        """A job on a lost (or revoked) host: past its deadline (or being cancelled) it ends with what it streamed;
        else it runs again elsewhere, not charged an attempt."""
        if run.escalation is None and now < run.deadline_at:
            return lost(run, f"host {host.name} {how}", self.settings.max_attempts, charge=False)
        reason = run.interrupt_reason or JobStatus.TIMED_OUT
        what = f"deadline of {run.job.deadline_s}s passed" if reason is JobStatus.TIMED_OUT else run.cancel_note
        return Settlement(reason, run.text, len(run.pieces), f"{what}; host {host.name} {how} before the engine "
                          "answered", extras=run.streamed_extras())

    def find(self, name: str) -> Host:
        """A host by its key, else by its name (HostNotFound; a name two hosts share: give the key)."""
        for engine in self.pool:  # hosts seen only through engines
            self.host(engine.host_key, engine.host)
        if name in self.hosts:
            return self.hosts[name]
        named = [h for h in self.hosts.values() if h.name == name]
        if len(named) != 1:
            raise HostNotFound(name, ambiguous=len(named) > 1)
        return named[0]

    def revoke(self, name: str, now: Now) -> tuple[Host, list[int], list[str]]:
        """Revoke a host: its engines leave (their jobs run again elsewhere, not charged), its agent is told to stop,
        its and its engines' keys are revoked, and nothing of it is admitted again. Returns the host, its engines
        taken out and the jobs that were running there."""
        host = self.find(name)
        if host.key == self.shared.driver.local_key:
            raise HostNotRevocable(host.name)
        ids = tuple(e.id for e in self.engines_on(host))
        agent = host.agent
        log.warning("host %s (%s) revoked: %d engines taken out, its agent %s told to stop, their keys revoked",
                    host.name, host.key, len(ids), agent or "(none)")
        host.revoked, host.agent, host.lost_at = True, "", None
        host.fenced.clear()
        driver = self.shared.driver
        self.shared.drive("revoke host", None, lambda: driver.revoke_host(host.key, agent, ids))
        jobs: list[str] = []
        for engine in [e for e in self.engines_on(host) if e.state not in GONE]:
            self.engines.take_out(engine, S.DEAD, f"host {host.name} revoked")
            for job_id in list(engine.jobs):
                run = self.jobs.running(job_id)
                if run is not None:
                    jobs.append(job_id)
                    self.jobs.settle(run, self._cut_off(run, host, now.mono, "revoked"), now)
            self.engines.gone(engine, "host_revoked", release=False, now=now)
        return host, list(ids), jobs

    # standbys of join agents -----------------------------------------------------------------------
    def agent_wants_standby(self, engine: Engine) -> bool:
        """A ready engine from a join agent's host stays a standby while that host has its serving count."""
        host = self.hosts.get(engine.host_key)
        if engine.set_id or host is None or not host.agent:
            return False
        others = [e for e in self.engines_on(host) if e is not engine and not e.set_id]
        active = sum(1 for e in others if e.state in ACTIVE)
        standbys = sum(1 for e in others if e.state is S.STANDBY)
        return active >= host.engines_wanted and standbys < host.standby_wanted

    # admin --------------------------------------------------------------------------------------------
    def host_views(self, now: Now) -> list[dict[str, Any]]:
        local = self.shared.driver.local_key
        for engine in self.pool:  # hosts seen only through engines (no agent)
            self.host(engine.host_key, engine.host)
        views = []
        for host in sorted(self.hosts.values(), key=lambda h: (h.key != local, h.name)):
            engines = self.engines_on(host)
            views.append({**host.view(engines, now.mono, host.key == local), "engines": [e.id for e in engines]})
        return views
