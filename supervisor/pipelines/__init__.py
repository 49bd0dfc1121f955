"""Pipelines: multi-step work where every step is an ordinary job (its own deadline, interrupts, retries, owner).

``spec`` reads and checks a request (steps, ``after``, ``map``, ``affinity``); ``records`` holds the pipeline's
immutable record and its statuses; ``plan`` decides, from the record and its steps' jobs, what happens next (pure:
time passed in); ``store`` keeps records durably (SQLite, an in-memory twin); ``runner`` is the shell that submits
and cancels jobs and writes records, driven by jobs settling and the pipeline's deadline.

May import: ``core`` (jobs, requests), ``rundir``. Nothing from ``cluster``, ``web``, zmq or ipyparallel.
"""
