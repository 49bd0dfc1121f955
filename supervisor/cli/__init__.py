"""The ``llmsup`` command: ``serve``, ``submit``, ``status``, ``kill``, ``engines``, ``join`` (``commands``), the
options of ``serve`` generated from the settings (``options``), what commands print (``output``), the join agent that
runs a host's engines (``join``), the server's logging (``logsetup``), and the page of every setting,
``docs/configuration.md``, rendered from the settings (``config_doc``).

May import: the rest of ``llmsup.supervisor`` and ``llmsup.engines``; ``llmsup.web`` only inside ``serve`` (the
composition root that wires the web app to the supervisor). The console script is ``llmsup.supervisor.cli:main``.
"""

from llmsup.supervisor.cli.commands import app, main

__all__ = ["app", "main"]
