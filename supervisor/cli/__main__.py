"""``python -m llmsup.supervisor.cli``: the ``llmsup`` command."""

from llmsup.supervisor.cli.commands import main

if __name__ == "__main__":  # not when a spawned worker process (the web's schema checker) re-imports the main module
    main()
