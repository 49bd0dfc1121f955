"""The process ledger records and signals only processes of this host, each checked by identity (pid + start time):
a remote engine's pid, which may be any local process here, is never signalled."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from llmsup.supervisor.cluster.leftovers import LOCAL, ProcessLedger

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated local process (in a group of its own) whose pid a remote engine happens to share."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_a_remote_pid_is_never_signalled_locally(tmp_path: Path, bystander: subprocess.Popen[bytes]) -> None:
    ledger = ProcessLedger(tmp_path / "run" / "processes.json")
    ledger.claim()
    started = psutil.Process(bystander.pid).create_time()
    # an engine of another host reports this pid (with its own start time): neither is recorded
    assert not ledger.record("engine:e1", bystander.pid, "gpu2|boot-of-gpu2", started)
    assert not ledger.record("engine:e2", bystander.pid, LOCAL, started - 5.0)  # same pid, another process
    assert ledger.entries == {}
    ledger.sweep()
    ledger.kill("engine:e1")
    assert bystander.poll() is None


def test_a_ledger_from_another_host_or_without_hosts_kills_nothing(tmp_path: Path,
                                                                  bystander: subprocess.Popen[bytes]) -> None:
    path = tmp_path / "run" / "processes.json"
    path.parent.mkdir(mode=0o700)
    ident = {"pid": bystander.pid, "create_time": psutil.Process(bystander.pid).create_time()}
    for entry in ({**ident, "host": "gpu2|other-boot"}, ident):  # a shared run dir; an older llmsup's ledger
        path.write_text(json.dumps({"owner": {"pid": 1, "create_time": 0}, "processes": {"engine:e1": entry}}))
        assert ProcessLedger(path).claim() == []
        assert bystander.poll() is None


def test_a_local_process_is_recorded_and_killed(tmp_path: Path, bystander: subprocess.Popen[bytes]) -> None:
    ledger = ProcessLedger(tmp_path / "run" / "processes.json")
    ledger.claim()
    assert ledger.record("engine:e1", bystander.pid, LOCAL, psutil.Process(bystander.pid).create_time())
    ledger.kill("engine:e1")
    assert bystander.wait(10) != 0
