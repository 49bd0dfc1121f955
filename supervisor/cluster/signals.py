"""Signals to engine processes on this host.

SIGINT goes to the engine's *main thread* (``tgkill(pid, pid, SIGINT)``; a
process's main thread id is its pid), not to the process: a process-directed
signal may be taken by any of the engine's helper threads, and then the main
thread, blocked in a poll, only sees it when the next message arrives — a
late interrupt that would hit whatever runs next. Falls back to ``os.kill``
where tgkill is not available.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import psutil

_SYS_TGKILL = {"x86_64": 234, "aarch64": 131}.get(os.uname().machine)
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, as the kernel says), None if there is none."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def same_process(pid: int, started: float | None) -> bool:
    """True if ``pid`` is still the process that started at ``started`` (not a reused pid).
    ``started`` None: nothing to compare with, trust the pid."""
    if started is None:
        return True
    now = process_started(pid)
    return now is not None and abs(now - started) < 0.05


def interrupt_main_thread(pid: int, sig: int = signal.SIGINT, started: float | None = None) -> None:
    """Send ``sig`` to the main thread of process ``pid`` (raises ProcessLookupError if it is gone, or if the
    pid now belongs to another process than the one started at ``started``)."""
    if not same_process(pid, started):
        raise ProcessLookupError(pid)
    if _libc is not None and _SYS_TGKILL is not None:
        if _libc.syscall(_SYS_TGKILL, pid, pid, sig) == 0:
            return
        err = ctypes.get_errno()
        if err == 3:  # ESRCH
            raise ProcessLookupError(pid)
    os.kill(pid, sig)


def kill_group(pid: int, started: float | None = None) -> bool:
    """SIGKILL the process group led by ``pid`` (its children die too), or the pid alone if it leads none;
    False if there was nothing to kill. Never our own group (an engine started without a session of its own
    shares it), and never a pid that now belongs to another process than the one started at ``started``."""
    if not same_process(pid, started):
        return False
    try:
        pgid = os.getpgid(pid)
        if pgid == pid and pgid != os.getpgid(0):
            os.killpg(pgid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        return True
    except OSError:  # gone already, or not ours to signal (EPERM): nothing we may kill
        return False
