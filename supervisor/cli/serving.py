"""``llmsup serve`` from the first engine launched to the last process stopped, in one asyncio loop.

The supervisor starts first (controller, engines, model loads), then uvicorn serves the web app. This runner, not
uvicorn, owns SIGINT and SIGTERM for the whole life of the process:

- during start-up a signal cancels the start, which stops whatever was started (``Supervisor.start``), and the
  process exits 128 + the signal's number;
- a model that no engine can load ends the start (``EngineStartFailed``): the engine's error on one line on stderr,
  everything stopped, exit status 1; so does a start that shows no progress for ``engine_start_timeout_s``;
- once serving, the first signal is uvicorn's graceful shutdown, a second SIGINT its forced one; then the supervisor
  stops every process it started and the process exits 0.

While engines start, the backend's key lines of their logs are shown (:mod:`engine_lines`). Once the web app
listens, one ready banner says where it is, what it serves and where its key is (:mod:`banner`).
The web app is built by the caller (``make_app``): this module imports nothing of ``llmsup.web``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from llmsup.supervisor.cli import banner, engine_lines
from llmsup.supervisor.core.start_failures import EngineStartFailed
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings

log = logging.getLogger("llmsup.cli")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ServeServer(uvicorn.Server):
    """uvicorn without signal handlers of its own (the runner's handle every moment, start-up included), which calls
    ``on_ready`` once it listens."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self.on_ready()


class Stopper:
    """What a SIGINT or SIGTERM does at this moment: cancel the start (once), or ask uvicorn to shut down."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.start: asyncio.Future[None] | None = None
        self.server: uvicorn.Server | None = None

    def __call__(self, sig: int) -> None:
        first = not self.signals
        self.signals.append(sig)
        name = signal.Signals(sig).name
        if self.start is not None and not self.start.done():
            if first:  # once: a second cancel would cut short the stop that the first one began
                _say(f"llmsup: {name} during start-up: stopping everything started so far")
                self.start.cancel()
        elif self.server is not None:
            if self.server.should_exit and sig == signal.SIGINT:
                self.server.force_exit = True
            self.server.should_exit = True


async def run(settings: Settings, make_app: Callable[[Settings, Supervisor], Any],
              uvicorn_options: dict[str, Any]) -> int:
    """Start, serve until a signal, stop; returns the exit status."""
    loop = asyncio.get_running_loop()
    stopper = Stopper()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stopper, sig)
    sup = Supervisor(settings)
    try:
        stopper.start = asyncio.ensure_future(sup.start())
        started = asyncio.Event()
        lines = asyncio.ensure_future(engine_lines.follow(sup, started))
        try:
            await stopper.start
        except asyncio.CancelledError:
            if not stopper.signals:
                raise
            return 128 + stopper.signals[0]
        except EngineStartFailed as exc:
            _say(f"llmsup: the model cannot be loaded, stopping: {exc}")
            return 1
        except TimeoutError as exc:
            _say(f"llmsup: the engines did not start, stopping: {exc}")
            return 1
        finally:
            started.set()
            await asyncio.gather(lines, return_exceptions=True)
        if stopper.signals:
            return 0
        app = make_app(settings, sup)
        config = uvicorn.Config(app, **uvicorn_options)
        server = ServeServer(config, lambda: banner.ready(settings, sup, app, config))
        stopper.server = server
        await server.serve()
        return 0
    finally:
        await sup.stop()  # nothing after a failed or cancelled start (it stopped itself); else every process
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def main(settings: Settings, make_app: Callable[[Settings, Supervisor], Any]) -> None:
    """Run the server in this process and end the process with its exit status.

    Everything it started is stopped when :func:`run` returns, so the process ends at once (``os._exit`` after the
    output is flushed): the interpreter's own finalization, after vLLM's parser was imported, took 20 s and more of
    garbage collection on a loaded 2-core host, past the stop bound a supervisor of this process allows.
    """
    status = asyncio.run(run(settings, make_app, uvicorn_options(settings)))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings from llmsup's (TLS, root path, its log level and access log as vLLM's flags name them)."""
    return dict(host=settings.host, port=settings.port, log_level=settings.uvicorn_log_level or settings.log_level,
                log_config=None, timeout_graceful_shutdown=5, limit_concurrency=settings.http_limit_concurrency,
                backlog=settings.http_backlog, root_path=settings.root_path,
                access_log=not settings.disable_uvicorn_access_log,
                ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
                ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
                ssl_ca_certs=str(settings.ssl_ca_certs) if settings.ssl_ca_certs else None,
                ssl_cert_reqs=settings.ssl_cert_reqs)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
