"""A supervisor core on the fake cluster and clock of ``fakes.py``, its engines loaded and serving (engine ``i``
reports an RSS of 100 + i MB, and 2 GiB of GPU memory when it has a GPU)."""

from __future__ import annotations

from pathlib import Path

from conftest import make_settings
from fakes import FakeClock, FakeDriver
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.owner import SupervisorCore
from llmsup.supervisor.store import MemoryStore


def make_core(tmp_path: Path, engines: int = 1, gpu_count: int = 0, **settings: object) -> tuple[
        SupervisorCore, FakeDriver, FakeClock]:
    clock, driver = FakeClock(), FakeDriver()
    core = SupervisorCore(make_settings(tmp_path, engines=engines, **settings), MemoryStore(), driver)
    core.configure_engines({"backend": "sim"}, gpu_count)
    core.start_engines(engines, clock.now)
    for i, (_, set_id, gpu) in enumerate(driver.verbs("launch")):
        core.report(ev.EngineRegistered(i), clock.now)
        ident = ev.EngineIdentity(host="h", host_key="h|boot", pid=1000 + i, gpu=gpu, engine_set=set_id)
        core.report(ev.EngineIdentified(i, ident), clock.now)
        core.report(ev.EngineLoaded(i, {"backend": "sim", "model": "sim"}, rss_mb=100.0 + i,
                                    gpu_mem_mb=2048.0 if gpu else None), clock.now)
    return core, driver, clock


def key_of(core: SupervisorCore, job_id: str) -> str:
    run = core.running_job(job_id)
    assert run is not None
    return run.key
