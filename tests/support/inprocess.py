"""The web app in-process: httpx's ``ASGITransport`` against ``create_app(settings, supervisor)``, no server, no engines.

The supervisor is the product's own ``Supervisor`` over an in-memory store, never started: no cluster, no engine, no
background loop. Every route that never reaches an engine (validation, auth, not-found, the OpenAPI schema, health,
metrics, the dashboard's files, the admin routes' checks, the queue limit) answers exactly as it does in a server;
a job submitted here stays ``queued`` (cancelling it ends it at once). The app's own lifespan runs around the
client, as a server would run it: the admin token is generated into the run directory, ``server.json`` written.

``ASGITransport`` hands over a response when it is complete, so streams (SSE, streamed completions) and anything
that waits for a job to end need a live server (``support.live``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
from fastapi import FastAPI

from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings
from llmsup.supervisor.store import MemoryStore
from llmsup.web.app import create_app

BASE_URL = "http://127.0.0.1"  # a Host the allowlist accepts (loopback)


@dataclass(frozen=True)
class InProcessApp:
    app: FastAPI
    supervisor: Supervisor
    http: httpx.AsyncClient

    @property
    def settings(self) -> Settings:
        return self.supervisor.settings

    @property
    def admin_token(self) -> str:
        configured = self.settings.admin_token
        if configured is not None:
            return configured.get_secret_value()
        return (self.settings.run_dir / "admin_token").read_text().strip()

    @property
    def admin(self) -> dict[str, str]:
        """The admin bearer header."""
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def api_key(self) -> str:
        """The key generated into the run directory ("unused" when keys were given or are off)."""
        key_file = self.app.state.auth.key_file
        return key_file.read_text().strip() if key_file is not None else "unused"

    def openai(self, api_key: str | None = None) -> openai.AsyncOpenAI:
        """The official SDK talking to this app, over an HTTP client of its own (closing the SDK closes that one)."""
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE_URL, timeout=10)
        return openai.AsyncOpenAI(base_url=f"{BASE_URL}/v1", api_key=api_key or self.api_key, max_retries=0,
                                  http_client=http)


def app_settings(run_dir: Path, **overrides: Any) -> Settings:
    """Settings of an in-process app: the sim backend (nothing is probed), ``overrides`` on top."""
    return Settings(**{"run_dir": run_dir, "backend": "sim", **overrides})


@asynccontextmanager
async def in_process(run_dir: Path, **settings: Any) -> AsyncIterator[InProcessApp]:
    """The app with these settings, its lifespan entered, and an ``httpx.AsyncClient`` bound to it."""
    supervisor = Supervisor(app_settings(run_dir, **settings), store=MemoryStore())
    app = create_app(supervisor.settings, supervisor)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        key_file = app.state.auth.key_file  # the run directory's key, sent as a client on this machine would
        headers = {"Authorization": f"Bearer {key_file.read_text().strip()}"} if key_file is not None else {}
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=10, headers=headers) as http:
            yield InProcessApp(app, supervisor, http)
