"""Processes a supervisor started, recorded in the run directory so that a
supervisor that died without cleaning up (SIGKILL, power loss) never leaves
its controller and engines running beside a new cluster.

Only processes of this host are recorded, each by identity (pid, start time, this host's key): an engine on
another host (started over ssh, or by a join agent) reports its own pid, which here may be any local process.
Nothing is signalled unless the pid is still the same process of this host."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import psutil

from llmsup.engines.runtime import host_key
from llmsup.supervisor.cluster.signals import kill_group
from llmsup.supervisor.rundir import prepare_run_dir, write_private

log = logging.getLogger("llmsup.leftovers")
LOCAL = host_key()  # this host's name and boot id


class ProcessLedger:
    """``<run-dir>/processes.json``: owner pid plus every process group we started."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}

    def _write(self) -> None:
        write_private(self.path, json.dumps({"owner": _ident(os.getpid()), "processes": self.entries}))

    def record(self, name: str, pid: int, host_key: str | None = None, started: float | None = None) -> bool:
        """Record a process of this host; ``host_key`` / ``started``: where the process says it runs and when it
        started (an engine's own report). A process of another host, or a pid that is another process here now,
        is not recorded (False)."""
        if host_key is not None and host_key != LOCAL:
            log.debug("%s: pid %d is on host %s, not this one: not recorded", name, pid, host_key)
            return False
        ident = _ident(pid)
        if not ident or (started is not None and abs(float(ident["create_time"]) - started) >= 0.01):
            return False
        self.entries[name] = ident
        self._write()
        return True

    def forget(self, name: str) -> None:
        if self.entries.pop(name, None) is not None:
            self._write()

    def kill(self, name: str) -> None:
        """Kill a recorded process (if it is still the same process) and forget it."""
        ident = self.entries.get(name)
        if ident and _alive(ident):
            kill_group(int(ident["pid"]))
        self.forget(name)

    def claim(self) -> list[str]:
        """Take the run directory: refuse one that is not private (RunDirError) or that a live supervisor
        owns, kill what a dead one left."""
        prepare_run_dir(self.path.parent)
        killed: list[str] = []
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = {}
            owner = data.get("owner")
            if owner and owner.get("pid") != os.getpid() and _alive(owner):
                raise RuntimeError(f"run directory in use by a running supervisor (pid {owner['pid']})")
            killed = _kill_alive(data.get("processes") or {})
        self.entries = {}
        self._write()
        if killed:
            log.warning("stopped processes left by a previous supervisor: %s", ", ".join(killed))
        return killed

    def sweep(self) -> list[str]:
        """At stop: kill what this supervisor recorded that is still alive (the cluster's own stop missed it:
        a nanny can hang in zmq term after its engine died) and forget everything."""
        killed = _kill_alive(self.entries)
        self.entries = {}
        self._write()
        if killed:
            log.info("stopped processes the cluster's stop left running: %s", ", ".join(killed))
        return killed

    def release(self) -> None:
        self.entries = {}
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _kill_alive(entries: dict[str, dict[str, Any]]) -> list[str]:
    killed = []
    for name, ident in entries.items():
        if _alive(ident):
            kill_group(int(ident["pid"]))
            killed.append(f"{name}:{ident['pid']}")
    return killed


def _ident(pid: int) -> dict[str, Any]:
    try:
        return {"pid": pid, "create_time": psutil.Process(pid).create_time(), "host": LOCAL}
    except psutil.Error:
        return {}


def _alive(ident: dict) -> bool:
    """The recorded process, still running on this host (a ledger of another host, or of an older llmsup that
    recorded no host, names none of ours)."""
    if ident.get("host") != LOCAL:
        return False
    try:
        proc = psutil.Process(int(ident["pid"]))
        return abs(proc.create_time() - float(ident["create_time"])) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, ValueError, TypeError):
        return False
