"""``llmsup serve`` without processes: uvicorn and the whole supervisor in-process, in a thread of this process.

The app is the product's own (``create_app(settings, make=InProcessSupervisor)``): the real core, loops, waiters and
event hub on the in-process driver (the sim backend's behaviours on the loop's timers) and the in-memory store. It
listens on a real port, so every client works against it as against a live server: httpx, the openai SDK, the
package's ``Client`` and ``AsyncClient``, the ``llmsup`` CLI's commands called in this process, SSE streams.

It runs on an event loop of its own, in a thread: a test's synchronous client may block while the server answers.
``InProcessServer`` has the attributes of ``support.live.LiveServer`` that tests read (``url``, ``run_dir``,
``engines``, ``admin``, ``api_key``, ``auth``, ``client()``, ``client_env``, ``log_tail()``, ``log_path``), so a
test written against a server runs on either (``tests/conftest.py``: the ``server`` fixture and its ``real`` parameter).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from llmsup.supervisor.inprocess import InProcessSupervisor
from llmsup.supervisor.settings import Settings
from llmsup.web.app import create_app

from .live import LiveServer, free_port
from .waiting import eventually

# the settings of support.live.SIM_TEST_ENV, as Settings fields
SIM_TEST_SETTINGS: dict[str, Any] = dict(heartbeat_ms=200, interrupt_grace_s=0.3, kill_grace_s=1.5, retry_backoff_s=0.05,
                                         deadline_s=30, sim_token_s=0.002, engine_start_timeout_s=60)
START_TIMEOUT_S = 30.0


class _LogFile(logging.Handler):
    """The server's log lines of this process's loggers, in a file (as ``llmsup serve``'s own log)."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.INFO)
        self.path = path
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115  # closed in close()

    def emit(self, record: logging.LogRecord) -> None:
        self._file.write(self.format(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        super().close()


@dataclass(frozen=True)
class InProcessServer:
    """A running in-process server: its URL, run directory and log, and the thread that runs it."""

    name: str
    url: str
    run_dir: Path
    engines: int
    log_path: Path
    uvicorn: uvicorn.Server
    thread: threading.Thread

    @property
    def client_env(self) -> dict[str, str]:
        return {"LLMSUP_URL": self.url, "LLMSUP_RUN_DIR": str(self.run_dir)}

    @property
    def admin_token(self) -> str:
        return (self.run_dir / "admin_token").read_text().strip()

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def api_key(self) -> str:
        """The API key the server generated in its run directory ("unused" when keys are off or the test's own)."""
        try:
            return (self.run_dir / "api_key").read_text().strip() or "unused"
        except OSError:
            return "unused"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key != "unused" else {}

    def client(self, keyed: bool = True, **kwargs: Any) -> httpx.Client:
        """An HTTP client for this server (``timeout`` 30 s unless given), sending the run directory's API key
        unless not ``keyed``."""
        headers = {**(self.auth if keyed else {}), **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30), headers=headers, **kwargs)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


Server = LiveServer | InProcessServer  # what a test written against "a server" gets


def settings_for(base: Path, engines: int = 2, **settings: Any) -> Settings:
    return Settings(**{"run_dir": base / "run", "backend": "sim", "engines": engines, "host": "127.0.0.1",
                       "port": free_port(), **SIM_TEST_SETTINGS, **settings})


@contextmanager
def serving_in_process(base: Path, engines: int = 2, **settings: Any) -> Iterator[InProcessServer]:
    """The in-process server with the test settings and ``settings`` for a ``with`` block; stopped after it (its
    thread joined: nothing is left running)."""
    base.mkdir(parents=True, exist_ok=True)
    s = settings_for(base, engines, **settings)
    log_path = base / "server-inprocess.log"
    handler = _LogFile(log_path)
    root = logging.getLogger("llmsup")
    root.addHandler(handler)
    config = uvicorn.Config(create_app(s, make=InProcessSupervisor), host=s.host, port=s.port, log_config=None,
                            log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as exc:  # reported to the starting thread below
            failed.append(exc)

    thread = threading.Thread(target=run, name=f"llmsup-inprocess-{s.port}", daemon=True)
    live = InProcessServer("llmsup in-process", f"http://127.0.0.1:{s.port}", s.run_dir, engines, log_path, server,
                           thread)
    thread.start()
    try:
        with httpx.Client(base_url=live.url, timeout=2) as http:

            def ready() -> bool:
                if failed or not thread.is_alive():
                    raise RuntimeError(f"in-process server ended at start: {failed!r}\n{live.log_tail()}")
                try:
                    resp = http.get("/readyz")
                except httpx.TransportError:
                    return False
                return resp.status_code == 200 and resp.json().get("engines", 0) >= engines

            eventually(ready, START_TIMEOUT_S, "the in-process server to serve", interval=0.01)
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        root.removeHandler(handler)
        handler.close()
        assert not thread.is_alive(), "the in-process server did not stop"
