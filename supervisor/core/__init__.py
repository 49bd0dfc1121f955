"""The owner of state: jobs and their one state machine (``jobs``, ``transitions``), engines and theirs
(``engine_state``), the escalation ladder (``ladder``), how an engine's answer becomes a job's outcome (``outcomes``),
the typed reports drivers send (``reports``), the driver port (``driver``), and the owner itself (``owner``) with its
engine and host sides.

Synchronous and deterministic: time is passed in. May import: ``llmsup.engines`` (its typed wire messages),
``settings``, ``metrics``. Nothing from ``cluster``, ``web``, zmq or ipyparallel (checked by ``tests/test_layout.py``).
"""
