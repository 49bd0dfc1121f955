"""Find a running server: an explicit URL, else ``LLMSUP_URL``, else the run directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmsup.supervisor.runfiles import ADMIN_TOKEN, DEFAULT_RUN_DIR, RUN_DIR_ENV, SERVER_FILE


def run_dir_default() -> Path:
    return Path(os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR))


def find_url(url: str | None = None, run_dir: Path | str | None = None) -> str:
    if url:
        return url.rstrip("/")
    if os.environ.get("LLMSUP_URL"):
        return os.environ["LLMSUP_URL"].rstrip("/")
    path = Path(run_dir) if run_dir else run_dir_default()
    try:
        return json.loads((path / SERVER_FILE).read_text())["url"].rstrip("/")
    except (OSError, ValueError, KeyError):
        return "http://127.0.0.1:8000"


def find_admin_token(token: str | None = None, run_dir: Path | str | None = None) -> str | None:
    if token:
        return token
    if os.environ.get("LLMSUP_ADMIN_TOKEN"):
        return os.environ["LLMSUP_ADMIN_TOKEN"]
    path = (Path(run_dir) if run_dir else run_dir_default()) / ADMIN_TOKEN
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
