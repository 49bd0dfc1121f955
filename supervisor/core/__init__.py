"""The owner of state: jobs and their one state machine (``jobs``, ``transitions``), engines and theirs
(``engine_state``), the escalation ladder (``ladder``), how an engine's answer becomes a job's outcome (``outcomes``),
the typed reports drivers send (``reports``), the driver port (``driver``), and the owner itself (``owner``), which
composes its job, engine and host sides (``job_side``, ``engine_side``, ``host_side``; their ports in ``parts``).

Synchronous and deterministic: every decision takes the moment (``now.Now``) from its caller; nothing here reads a
clock (checked by ``tests/test_layout.py``). May import: ``llmsup.engines`` (its typed wire messages),
``settings``, ``metrics``. Nothing from ``cluster``, ``web``, zmq or ipyparallel (checked by ``tests/test_layout.py``).
"""
