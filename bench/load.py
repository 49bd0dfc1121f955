"""CPU saturation for 'busy machine' figures: one spinning process per core, in our session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def saturate(n: int | None = None, same_session: bool = True) -> Iterator[None]:
    """Spin every core. ``same_session``: the spinners share the supervisor's session (and so its scheduling
    autogroup, docs/measured.md section 5): the worst case, where the supervisor's own timers starve; otherwise each
    runs in a session of its own, like other services on the host."""
    n = n or os.cpu_count() or 2
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=not same_session)
             for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
