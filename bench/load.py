"""CPU saturation for 'busy machine' figures: one spinning process per core, in our session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def saturate(n: int | None = None) -> Iterator[None]:
    n = n or os.cpu_count() or 2
    # same session as the benchmark (autogroup scheduling would otherwise shield us: FACTS.md)
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
