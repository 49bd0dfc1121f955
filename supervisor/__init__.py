"""llmsup's control plane, one folder per role:

- ``core/``: the owner of job and engine state (state machines, the escalation ladder, outcomes, the driver port);
- ``cluster/``: the real IPyParallel cluster, llmsup's channels to engines, signals, launchers, the process ledger;
- ``store/``: the job store (SQLite, its in-memory twin, migrations, retention);
- ``client/``: the Python client (async and sync), for notebooks and scripts;
- ``cli/``: the ``llmsup`` command and the join agent;
- ``metrics/``: Prometheus metrics;
- ``service.py``: the async shell that runs the core with its drivers; ``settings.py``; ``rundir.py``;
- ``port.py``: what the web app may ask of the supervisor (``ControlPlane``); ``inprocess.py``: the whole
  supervisor in one process on simulated engines, for tests.

May import: ``llmsup.engines``; never ``llmsup.web`` (only the CLI's ``serve``, the composition root, wires the web app
to the supervisor). The rules are checked by ``tests/test_layout.py``.
"""

__version__ = "0.1.0"
