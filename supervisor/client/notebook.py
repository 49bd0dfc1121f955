"""Join the server's IPyParallel cluster from a notebook, and borrow an engine without breaking dispatch.

The server's cluster lives in ``<run-dir>/ipython/profile_llmsup`` (cluster id ``llmsup``); its client
connection file is ``security/ipcontroller-llmsup-client.json`` there. An ``ipyparallel.Client`` made
from it inside IPython registers ``%px`` / ``%%px`` on all engines.

Safe: reading state (``engines.runtime.identity()``: backend, model, GPU, pid, RSS). Not safe: work on an
engine the supervisor thinks idle (a job sent to it would wait behind that work while its deadline runs,
and the watchdog's SIGINT would land in your code). :func:`borrow_engine` makes it safe:

1. drain one engine through the admin API (``POST /admin/engines/{id}/drain``): no new job goes to it;
2. wait until the supervisor shows no job on it, and a no-op on it returns (the engine is free);
3. yield a DirectView of it;
4. on exit, send a no-op and wait for it: tasks on one engine run in order, so its reply proves your work
   there is done; only then undrain (``?undo=true``). If your work is still running after
   ``release_timeout``, the engine stays drained (``BorrowError``) until you undrain or restart it.

The notebook never signals engines: the supervisor alone interrupts, and only its own jobs. The code here is
asynchronous (the async client's own); the sync client runs it on its loop thread.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmsup.supervisor.client.base import Deadline
from llmsup.supervisor.client.discovery import run_dir_default
from llmsup.supervisor.client.errors import BorrowError, NotFound
from llmsup.supervisor.runfiles import IPYTHON_DIR, PROFILE_DIR

if TYPE_CHECKING:
    from llmsup.supervisor.client.asynchronous import AsyncClient

CLUSTER_ID = "llmsup"
POLL_S = 0.05  # engines have no long-poll route: their list is read again this often while waiting


def profile_dir(run_dir: Path | str | None = None) -> Path:
    return (Path(run_dir) if run_dir else run_dir_default()) / IPYTHON_DIR / PROFILE_DIR


def connection_file(run_dir: Path | str | None = None) -> Path:
    return profile_dir(run_dir) / "security" / f"ipcontroller-{CLUSTER_ID}-client.json"


def connect_cluster(run_dir: Path | str | None = None, url_file: Path | str | None = None, **kwargs: Any) -> Any:
    """An ``ipyparallel.Client`` on the cluster of the server whose run directory this is.

    ``url_file``: a copy of the server's ``ipcontroller-llmsup-client.json`` (e.g. for a remote server,
    with ``sshserver=...`` in ``kwargs``). Other ``kwargs`` go to ``ipyparallel.Client``.
    """
    import ipyparallel as ipp

    path = Path(url_file) if url_file else connection_file(run_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"no cluster connection file at {path}: joining the cluster needs the server's run directory "
            "(LLMSUP_RUN_DIR), or a copy of its ipcontroller-llmsup-client.json passed as url_file=")
    if not url_file:
        kwargs.setdefault("profile_dir", str(profile_dir(run_dir)))  # not ~/.ipython
    return ipp.Client(str(path), **kwargs)


async def sync_cluster(client: AsyncClient, rc: Any, timeout: float = 30.0) -> list[int]:
    """Wait until the cluster client ``rc`` sees exactly the engines the supervisor lists; their ids.

    Registration and unregistration reach each IPyParallel client on its own, a moment apart.
    """
    end = Deadline.after(timeout)
    while True:
        want = {e["id"] for e in await client.engines()}
        if set(rc.ids) == want:
            return sorted(want)
        if end.passed():
            raise BorrowError(f"cluster client sees engines {rc.ids}, the supervisor {sorted(want)}")
        await asyncio.sleep(POLL_S)


def _pick(engines: dict[int, dict[str, Any]]) -> int | None:
    """An idle engine if any, else a busy one (it is drained after its job); never one already drained."""
    for wanted in ("idle", "busy"):
        ids = sorted(eid for eid, e in engines.items() if e["state"] == wanted)
        if ids:
            return ids[0]
    return None


async def _acquire(client: AsyncClient, engine_id: int | None, end: Deadline) -> int:  # noqa: C901 - the borrow loop: one state machine over engine states
    chosen, drained = engine_id, False
    try:
        while True:
            engines = {e["id"]: e for e in await client.engines()}
            if chosen is None:
                chosen, drained = _pick(engines), False
            engine = engines.get(chosen) if chosen is not None else None
            if chosen is not None and engine is None:
                if engine_id is not None:
                    raise BorrowError(f"no engine {engine_id} (engines: {sorted(engines)})")
                chosen = None  # it went away (restarted): pick another
            elif engine is not None and chosen is not None:
                state = engine["state"]
                if state == "draining" and not drained:
                    if engine_id is not None:
                        raise BorrowError(f"engine {engine_id} is already drained (borrowed elsewhere?)")
                    chosen = None
                elif state == "draining" and not engine["jobs"]:
                    return chosen
                elif state in ("idle", "busy"):
                    await client.drain_engine(chosen)
                    drained = True
                    continue
            if end.passed():
                raise BorrowError(f"could not borrow an engine in time; engines: {list(engines.values())}")
            await asyncio.sleep(POLL_S)
    except BaseException:
        if drained and chosen is not None:
            await _undrain(client, chosen)
        raise


async def _undrain(client: AsyncClient, engine_id: int) -> None:
    try:
        await client.drain_engine(engine_id, undo=True)
    except NotFound:
        pass  # restarted meanwhile: its replacement serves


async def _probe(view: Any, timeout: float) -> None:
    """A no-op on the engine, awaited: tasks on one engine run in order, so its reply means the engine is free.

    ``TimeoutError`` after ``timeout``; the no-op stays queued there (shielded: cancelling ipyparallel's
    future would break its bookkeeping)."""
    reply = asyncio.wrap_future(view.apply_async(os.getpid))
    await asyncio.wait_for(asyncio.shield(reply), timeout)


async def _visible(rc: Any, eid: int, end: Deadline) -> None:
    while eid not in rc.ids:  # registration reaches this client a moment after the supervisor
        if end.passed():
            raise BorrowError(f"engine {eid} not visible to this cluster client: {rc.ids}")
        await asyncio.sleep(POLL_S)


@asynccontextmanager
async def borrow_engine(client: AsyncClient, engine_id: int | None = None, timeout: float = 60.0, rc: Any = None,
                        release_timeout: float = 30.0) -> AsyncIterator[Any]:
    """Drain one engine (``engine_id``, else an idle one), yield a DirectView of it, hand it back on exit."""
    end = Deadline.after(timeout)
    own_rc = rc is None
    rc = await asyncio.to_thread(connect_cluster, client.run_dir) if own_rc else rc
    try:
        eid = await _acquire(client, engine_id, end)
        try:
            await _visible(rc, eid, end)
            view = rc[eid]
            await _probe(view, max(1.0, end.step(timeout)))
        except BaseException:
            await _undrain(client, eid)
            raise
        failed = False
        try:
            yield view
        except BaseException:
            failed = True
            raise
        finally:
            await _release(client, view, eid, release_timeout, failed)
    finally:
        if own_rc:
            await asyncio.to_thread(rc.close)


async def _release(client: AsyncClient, view: Any, eid: int, release_timeout: float, failed: bool) -> None:
    try:
        await _probe(view, release_timeout)
    except TimeoutError:
        msg = (f"engine {eid} is still running work sent while it was borrowed; it stays drained. When that "
               f"work is done: client.drain_engine({eid}, undo=True); or client.restart_engine({eid})")
        if failed:
            warnings.warn(msg, stacklevel=3)
            return
        raise BorrowError(msg) from None
    except Exception:  # noqa: BLE001 - the engine died under the borrowed work: the supervisor replaces it
        return
    await _undrain(client, eid)
