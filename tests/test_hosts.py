"""Three hosts (the server's own and two namespace hosts, each with 2 sim engines) run 300 jobs with runaways among
them; one host is cut off mid-run and later restored.

Every job ends exactly once and none is lost; the jobs of the cut-off host run again elsewhere without being
charged an attempt; runaways on the other hosts are interrupted through ``Client.send_signal`` (the nanny on their
host) and their engines take the next jobs; once the host is back, its old engines are replaced and the cluster
has its 6 engines again.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from concurrent.futures import Future
from pathlib import Path

import pytest

from hostfixtures import host_settings, serving_on, start_agent, until
from llmsup.supervisor.core.events import Subscription
from llmsup.supervisor.core.jobs import JobStatus
from llmsup.supervisor.core.requests import JobRequest
from llmsup.supervisor.service import Supervisor
from nethosts import HostNet, hostnet  # noqa: F401 (fixture)

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]
S = JobStatus
JOBS, RUNAWAY_EVERY = 300, 15


def job_request(i: int) -> JobRequest:
    if i % RUNAWAY_EVERY == 7:
        return JobRequest(f"runaway {i} [sim:hang]", deadline_s=1.0)
    if i % 5 == 0:
        return JobRequest(f"slow {i} [sim:slow=0.02]", max_tokens=30)  # keeps engines busy when the cut comes
    return JobRequest(f"job {i}", max_tokens=4)


async def test_host_cut_off_mid_run_and_restored(hostnet: HostNet, tmp_path: Path) -> None:  # noqa: F811
    hosta, hostb = hostnet.add_host("hosta"), hostnet.add_host("hostb")
    sup = Supervisor(host_settings(hostnet, tmp_path / "run", engines=2, host_loss_s=4.0))
    signals: list[tuple[int, int]] = []  # (engine id, signal) sent through the controller and the engine's nanny
    try:
        await sup.start()
        send_signal = sup.cluster.send_signal

        def counting_send_signal(engine_id: int, sig: int) -> Future:
            signals.append((engine_id, sig))
            return send_signal(engine_id, sig)

        sup.cluster.send_signal = counting_send_signal  # type: ignore[method-assign]
        terminal: Counter[str] = Counter()  # terminal status events per job: exactly one each
        events = sup.hub.subscribe(None, maxsize=1_000_000)
        watcher = asyncio.ensure_future(count_terminal(events, terminal))
        for host in (hosta, hostb):
            start_agent(hostnet, host, sup, engines=2)
        await until(lambda: len(sup.pool.serving()) == 6, 90, "6 engines serving on 3 hosts")
        hosts = {e.host for e in sup.pool}
        assert len(hosts) == 3 and {"hosta", "hostb"} < hosts
        a_ids = {e.id for e in sup.pool if e.host == "hosta"}

        jobs = [sup.submit(job_request(i)).job for i in range(JOBS)]
        await until(lambda: sum(sup.get(j.id).status.terminal for j in jobs) >= JOBS // 3, 120, "a third done")
        await until(lambda: any(e.jobs for e in sup.pool if e.host == "hostb"), 30, "hostb running a job")
        b_key = next(e.host_key for e in sup.pool if e.host == "hostb")
        old_b = {e.id for e in sup.pool if e.host == "hostb"}
        hostnet.cut(hostb)
        await until(lambda: sup.hosts[b_key].lost_at is not None, 20, "hostb taken as lost")
        await until(lambda: not old_b & set(sup.pool.engines), 10, "hostb's engines taken out")
        hostnet.restore(hostb)
        await until(lambda: all(sup.get(j.id).status.terminal for j in jobs), 180, "every job to end")
        await until(lambda: len(serving_on(sup, "hostb")) == 2 and len(sup.pool.serving()) == 6, 90,
                    "hostb's engines replaced, 6 engines again")

        final = [sup.get(j.id) for j in jobs]
        runaways = [j for j in final if "[sim:hang]" in j.prompt]
        others = [j for j in final if j not in runaways]
        assert all(j.status is S.TIMED_OUT for j in runaways), Counter(j.status for j in runaways)
        assert all(j.status is S.SUCCEEDED for j in others), [(j.id, j.status, j.error) for j in others
                                                                 if j.status is not S.SUCCEEDED]
        assert all(j.attempts == 1 for j in final), [(j.id, j.attempts, j.error) for j in final if j.attempts != 1]
        await until(lambda: len(terminal) == JOBS, 10, "every terminal event")
        assert set(terminal.values()) == {1}  # no job ended twice (a late answer from hostb was dropped)
        assert sum(sup.metrics.requeues.labels(r)._value.get() for r in ("engine_lost", "other")) >= 1
        assert sup.hosts[b_key].losses == 1 and all(h.losses == 0 for h in sup.hosts.values() if h.key != b_key)
        assert not old_b & set(sup.pool.engines) and not sup.hosts[b_key].fenced

        # runaways on hosta were interrupted through send_signal (its nanny); its engines stayed and took next jobs
        assert {e.id for e in sup.pool if e.host == "hosta"} == a_ids
        on_a = [j for j in runaways if j.engine is not None and j.engine.id in a_ids]
        assert on_a, "no runaway ran on hosta"
        interrupted = {eid for eid, sig in signals if sig == signal.SIGINT}
        assert all(j.engine is not None and j.engine.id in interrupted and "interrupted" in (j.error or "")
                   for j in on_a), [(j.engine, j.error) for j in on_a]
        assert any(later.engine is not None and later.engine.id == job.engine.id and later.started_at and
                   job.finished_at and later.started_at >= job.finished_at for job in on_a for later in final)
        assert not any(sig == signal.SIGKILL and eid in a_ids for eid, sig in signals)
        watcher.cancel()
    finally:
        await sup.stop()


async def count_terminal(events: Subscription, terminal: Counter[str]) -> None:
    while True:
        event = await events.get()
        if event is None:
            return
        if event.get("type") == "status" and S(event["status"]).terminal:
            terminal[event["job_id"]] += 1
