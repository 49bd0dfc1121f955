"""The one ready banner of ``llmsup serve``: where the server is, what it serves on which engines and GPUs, where
its API key and admin token are, and the dashboard. Printed on stdout once the web app listens (the log goes to
stderr)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uvicorn

from llmsup.supervisor.core.engine_state import EngineState
from llmsup.supervisor.pools import pools_of, served_name
from llmsup.supervisor.service import Supervisor
from llmsup.supervisor.settings import Settings


def base_url(settings: Settings, config: uvicorn.Config) -> str:
    """The URL a client on this machine uses (a wildcard bind is reached on loopback)."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
    scheme = "https" if config.ssl_certfile else "http"
    return f"{scheme}://{host}:{settings.port}{(config.root_path or '').rstrip('/')}"


def pools_line(settings: Settings) -> str:
    """Each pool: its name, what it serves (a model's served name, or functions) and its backend."""
    return "; ".join(f"{p.name}: {'functions' if p.runs_functions else served_name(p)} "
                     f"(backend {p.settings.backend}, {p.settings.engines} engines)" for p in pools_of(settings))


def engines_line(sup: Supervisor) -> str:
    engines = sorted(sup.pool.serving(), key=lambda e: e.id)
    places = ", ".join(f"{e.id} ({'GPU ' + e.gpu if e.gpu else 'CPU'}, pid {e.pid})" for e in engines)
    standby = len([e for e in sup.pool if e.state is EngineState.STANDBY])
    return f"{len(engines)} serving: {places or '-'}" + (f"; {standby} standby" if standby else "")


def key_line(settings: Settings, app: Any) -> str:
    auth = getattr(app.state, "auth", None)
    if auth is None or not auth.keys_required:
        return "none required (--require-api-keys off): anyone who reaches this address may use it"
    key_file: Path | None = auth.key_file
    if key_file is not None:
        return (f"{key_file} (the CLI and the Python client read it there; OpenAI clients: "
                f"export OPENAI_API_KEY=$(cat {key_file}))")
    return "the keys given (--api-key, VLLM_API_KEY or the keys file)"


def ready(settings: Settings, sup: Supervisor, app: Any, config: uvicorn.Config) -> None:
    url = base_url(settings, config)
    model = settings.served_model_name or settings.model or "a tiny local model (random weights; --model to name one)"
    first = ("model", f"{model} (backend {sup.core.engine_config.get('backend', settings.backend)})")
    rows = [
        ("pools", pools_line(settings)) if settings.pools else first,
        ("engines", engines_line(sup)),
        ("API key", key_line(settings, app)),
        ("admin", f"token in {settings.admin_token_path.resolve()}"
         if settings.admin_token is None else "the admin token given"),
        ("dashboard", f"{url}/dashboard"),
        ("OpenAI API", f"{url}/v1 (docs: {url}/docs)"),
    ]
    lines = [f"llmsup ready at {url}"] + [f"  {name:<11}{text}" for name, text in rows]
    print("\n".join(lines), file=sys.stdout, flush=True)
