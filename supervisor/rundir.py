"""The run directory is private: 0700, owned by the user who runs llmsup, its files 0600.

Everything a supervisor writes there (prompts in the SQLite store, the admin token, the IPyParallel
connection files that let a client run code on every engine) is readable by its owner only:

- :func:`prepare_run_dir` creates the directory 0700, tightens one of ours that an older llmsup left
  0755, and refuses (:class:`RunDirError`, one message) a directory owned by someone else or writable by
  group or others: whoever can write there can plant a file we would trust;
- :func:`write_private` writes a file 0600 without following a symlink planted at its name: into a new
  temporary name (``O_CREAT | O_EXCL | O_NOFOLLOW``), then ``rename`` over the final name;
- :func:`create_private` makes an empty file 0600 (e.g. the SQLite store before SQLite opens it, so that
  its ``-wal`` / ``-shm`` files, which SQLite creates with the database's mode, are 0600 too).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class RunDirError(RuntimeError):
    """The run directory cannot be used safely; the message says why and what to do."""


def prepare_run_dir(path: Path, what: str = "run directory") -> Path:
    """Create ``path`` 0700 (parents as needed), or check an existing one; returns it."""
    try:
        path.mkdir(mode=PRIVATE_DIR, parents=True)
    except FileExistsError:
        pass
    check_private_dir(path, what)
    return path


def check_private_dir(path: Path, what: str = "run directory") -> None:
    """Refuse a directory we do not own or that others may write; make one of ours 0700."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise RunDirError(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise RunDirError(f"{what} {path} is not a directory")
    if info.st_uid != os.geteuid():
        raise RunDirError(
            f"{what} {path} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()}): "
            "refusing to keep prompts and tokens there; choose another --run-dir")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RunDirError(
            f"{what} {path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}): "
            f"refusing it; run `chmod 700 {path}` or choose another --run-dir")
    if stat.S_IMODE(info.st_mode) != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)  # ours, e.g. 0755 from an older llmsup: nobody else reads it from now on


def write_private(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data``, mode 0600, never writing through a symlink at ``path``."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        try:
            os.fchmod(fd, PRIVATE_FILE)  # whatever the umask
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)  # a symlink at ``path`` is replaced, not followed
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_private(path: Path) -> None:
    """Make sure ``path`` is a regular file of ours with mode 0600 (created empty if missing)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise RunDirError(f"{path} is not a regular file of this user: refusing to use it") from None
        if stat.S_IMODE(info.st_mode) != PRIVATE_FILE:
            os.chmod(path, PRIVATE_FILE)
        return
    os.close(fd)


def tighten(path: Path) -> None:
    """Mode 0600 for an existing regular file of ours (e.g. a ``-wal`` left 0644 by an older llmsup)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != PRIVATE_FILE:
        os.chmod(path, PRIVATE_FILE)
