"""Signals go only to the process the supervisor means: a pid is checked against its start time first."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmsup.supervisor.cluster.signals import interrupt_main_thread, kill_group, process_started, same_process

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def child() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_a_reused_pid_is_not_signalled(child: subprocess.Popen[bytes]) -> None:
    started = process_started(child.pid)
    assert started is not None and same_process(child.pid, started)
    other = started - 5.0  # what the supervisor recorded for the process that held this pid before
    assert not same_process(child.pid, other)
    assert kill_group(child.pid, other) is False
    with pytest.raises(ProcessLookupError):
        interrupt_main_thread(child.pid, started=other)
    assert child.poll() is None  # untouched
    assert kill_group(child.pid, started) is True
    assert child.wait(timeout=10) == -9


def test_a_gone_process_is_not_an_error() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert kill_group(proc.pid) is False

