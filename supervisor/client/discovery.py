"""Find a running server: an explicit URL, else ``LLMSUP_URL``, else the run directory's ``server.json``.

``server.json`` is read only when it is the user's own private file (a regular file, not a link, owned by this user,
readable by nobody else, as the server writes it): a ``./.llmsup/server.json`` planted by someone else (in a shared
directory) would otherwise send the client, and the keys it carries, wherever that file says.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

from llmsup.supervisor.runfiles import ADMIN_TOKEN, DEFAULT_RUN_DIR, RUN_DIR_ENV, SERVER_FILE

DEFAULT_URL = "http://127.0.0.1:8000"


log = logging.getLogger("llmsup.client")


def read_private(path: Path) -> str | None:
    """The text of ``path`` if it is a regular file of this user that group and others cannot read nor write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, encoding="utf-8") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            log.warning("ignoring %s: not a private file of this user (owner uid %d, mode %04o)", path, info.st_uid,
                        stat.S_IMODE(info.st_mode))
            return None
        return f.read(65_536)


def run_dir_default() -> Path:
    return Path(os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR))


def find_url(url: str | None = None, run_dir: Path | str | None = None) -> str:
    if url:
        return url.rstrip("/")
    if os.environ.get("LLMSUP_URL"):
        return os.environ["LLMSUP_URL"].rstrip("/")
    path = Path(run_dir) if run_dir else run_dir_default()
    text = read_private(path / SERVER_FILE)
    try:
        return str(json.loads(text)["url"]).rstrip("/") if text is not None else DEFAULT_URL
    except (ValueError, KeyError, TypeError):
        return DEFAULT_URL


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
