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

The notebook never signals engines: the supervisor alone interrupts, and only its own jobs.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmsup.supervisor.client_base import BorrowError, NotFound
from llmsup.supervisor.discovery import run_dir_default

if TYPE_CHECKING:
    from llmsup.supervisor.client import Client

CLUSTER_ID = "llmsup"
POLL_S = 0.05


def profile_dir(run_dir: Path | str | None = None) -> Path:
    return (Path(run_dir) if run_dir else run_dir_default()) / "ipython" / f"profile_{CLUSTER_ID}"


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


def sync_cluster(client: Client, rc: Any, timeout: float = 30.0) -> list[int]:
    """Wait until the cluster client ``rc`` sees exactly the engines the supervisor lists; their ids.

    Registration and unregistration reach each IPyParallel client on its own, a moment apart.
    """
    end = time.monotonic() + timeout
    while True:
        want = {e["id"] for e in client.engines()}
        if set(rc.ids) == want:
            return sorted(want)
        if time.monotonic() >= end:
            raise BorrowError(f"cluster client sees engines {rc.ids}, the supervisor {sorted(want)}")
        time.sleep(POLL_S)


def _pick(engines: dict[int, dict[str, Any]]) -> int | None:
    """An idle engine if any, else a busy one (it is drained after its job); never one already drained."""
    for wanted in ("idle", "busy"):
        ids = sorted(eid for eid, e in engines.items() if e["state"] == wanted)
        if ids:
            return ids[0]
    return None


def _acquire(client: Client, engine_id: int | None, end: float) -> int:
    chosen, drained = engine_id, False
    try:
        while True:
            engines = {e["id"]: e for e in client.engines()}
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
                    client.drain_engine(chosen)
                    drained = True
                    continue
            if time.monotonic() >= end:
                raise BorrowError(f"could not borrow an engine in time; engines: {list(engines.values())}")
            time.sleep(POLL_S)
    except BaseException:
        if drained and chosen is not None:
            _undrain(client, chosen)
        raise


def _undrain(client: Client, engine_id: int) -> None:
    try:
        client.drain_engine(engine_id, undo=True)
    except NotFound:
        pass  # restarted meanwhile: its replacement serves


def _probe(view: Any, timeout: float) -> None:
    view.apply_async(os.getpid).get(timeout=timeout)


@contextmanager
def borrow_engine(client: Client, engine_id: int | None = None, timeout: float = 60.0, rc: Any = None,
                  release_timeout: float = 30.0) -> Iterator[Any]:
    """Drain one engine (``engine_id``, else an idle one), yield a DirectView of it, hand it back on exit."""
    end = time.monotonic() + timeout
    own_rc = rc is None
    rc = connect_cluster(client.run_dir) if own_rc else rc
    try:
        eid = _acquire(client, engine_id, end)
        try:
            while eid not in rc.ids:  # registration reaches this client a moment after the supervisor
                if time.monotonic() >= end:
                    raise BorrowError(f"engine {eid} not visible to this cluster client: {rc.ids}")
                time.sleep(POLL_S)
            view = rc[eid]
            _probe(view, max(1.0, end - time.monotonic()))
        except BaseException:
            _undrain(client, eid)
            raise
        failed = False
        try:
            yield view
        except BaseException:
            failed = True
            raise
        finally:
            _release(client, view, eid, release_timeout, failed)
    finally:
        if own_rc:
            rc.close()


def _release(client: Client, view: Any, eid: int, release_timeout: float, failed: bool) -> None:
    try:
        _probe(view, release_timeout)
    except TimeoutError:
        msg = (f"engine {eid} is still running work sent while it was borrowed; it stays drained. When that "
               f"work is done: client.drain_engine({eid}, undo=True); or client.restart_engine({eid})")
        if failed:
            warnings.warn(msg, stacklevel=3)
            return
        raise BorrowError(msg) from None
    except Exception:  # noqa: BLE001 - the engine died under the borrowed work: the supervisor replaces it
        return
    _undrain(client, eid)
