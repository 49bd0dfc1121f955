"""The real cluster: IPyParallel's controller and engines (``manager``), the driver that does what the core asks on
them (``driver``), llmsup's own channels to engines (``control``: the control channel, ``stream_reader``: the token
stream; both CURVE-secured, ``curve``), signals to engine processes, the process ledger (``leftovers``), launchers and
the join file.

May import: ``core`` (reports, the driver port, engine records), ``settings``, ``rundir``, ``metrics``,
``llmsup.engines``, zmq, ipyparallel. Nothing from ``web``.
"""
