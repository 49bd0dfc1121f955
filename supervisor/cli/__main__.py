"""``python -m llmsup.supervisor.cli``: the ``llmsup`` command."""

from llmsup.supervisor.cli.commands import main

main()
