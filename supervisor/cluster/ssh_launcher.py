"""IPyParallel's SSH engine launcher, with its ssh commands run off the supervisor's event loop.

IPyParallel's ``SSHEngineSetLauncher`` starts an engine with half a dozen blocking ``ssh`` / ``scp`` calls (shell
check, Python check, remote profile, files, start), and signals it with another: run on the event loop, each launch
would hold every deadline and every other engine's events for seconds (or a connect timeout, toward a host that
is cut off). Here the start and the signals run in worker threads; everything else (configuration, the remote
commands, how the engine is watched) is IPyParallel's own, configured as usual in the profile's
``ipcluster_config.py`` (``c.SSHLauncher.ssh_args``, ``remote_python``, ...).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
from typing import Any

from ipyparallel.cluster.launcher import SSHEngineLauncher, SSHEngineSetLauncher
from tornado import ioloop
from traitlets import default

log = logging.getLogger("llmsup.ssh")


class _SSHEngineLauncher(SSHEngineLauncher):
    @default("loop")
    def _loop_default(self) -> ioloop.IOLoop:
        return self.parent.loop  # created in a worker thread: callbacks still go to the supervisor's loop

    def signal(self, sig: int) -> None:
        threading.Thread(target=self._signal, args=(sig,), name="llmsup-ssh-signal", daemon=True).start()

    def _signal(self, sig: int) -> None:
        """The remote kill fails when the engine is already gone (ProcessLookupError on its host, so ssh exits
        1) or the host is unreachable: either way there is nothing left to signal from here, and the supervisor
        learns of the engine's end from its heartbeats, not from this call."""
        try:
            super().signal(sig)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            log.info("signal %d to remote engine pid %s not delivered: %s", sig, self.pid, exc)


class SSHEngineSetLauncherOffLoop(SSHEngineSetLauncher):
    launcher_class = _SSHEngineLauncher

    def start(self, n: int) -> Any:
        self.loop  # noqa: B018 (resolved here, on the event loop's thread, for the engines' launchers)
        return asyncio.get_running_loop().run_in_executor(None, super().start, n)
