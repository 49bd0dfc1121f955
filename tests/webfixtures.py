"""Fixtures for the web tests: a real ``llmsup serve`` (uvicorn + supervisor + local cluster) per module.

Built on ``serverfixtures`` (its own process group in this session; teardown SIGTERMs it and kills by tag
whatever survived). Settings go in as ``LLMSUP_*`` environment variables. The admin token is the one the
server generated into ``<run-dir>/admin_token``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverfixtures import LiveServer, finish_server, start_server


class Server:
    def __init__(self, base: Path, env: dict[str, str] | None = None, engines: int = 2, backend: str = "sim",
                 start_timeout_s: float = 90.0) -> None:
        self.live: LiveServer = start_server(base, engines=engines, env=env, backend=backend,
                                             start_timeout_s=start_timeout_s)
        self.url = self.live.url
        self.run_dir = self.live.run_dir
        self.admin_token = (self.run_dir / "admin_token").read_text().strip()

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30), **kwargs)

    def log(self) -> str:
        return self.live.log_tail()

    def stop(self) -> None:
        finish_server(self.live)


def serve(tmp_path_factory: pytest.TempPathFactory, name: str, engines: int = 2, **env: object) -> Iterator[Server]:
    """Start a server for a fixture (``env``: setting name -> value, e.g. ``queue_max=2``), stop it after."""
    server = Server(tmp_path_factory.mktemp(name), {f"LLMSUP_{k.upper()}": str(v) for k, v in env.items()}, engines)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the default test settings, shared by the tests of one module."""
    yield from serve(tmp_path_factory, "web")


def wait_for(predicate: Any, timeout: float = 20, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def job_status(client: httpx.Client, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return client.get(f"/v1/jobs/{job_id}", headers=headers).json()
