"""How a setting shows on the command line: its help panel and extra flag names (see ``supervisor/settings.py``)."""

from __future__ import annotations

from typing import Any

# help panels of `llmsup serve --help`
SERVER, ENGINES, MODEL, JOBS, SECURITY = "Server", "Engines", "Model", "Jobs and deadlines", "Security"
FRONTEND = "HTTP server (vLLM's API server flags)"


def cli(panel: str, *flags: str, aliases: tuple[str, ...] = (), pairs: bool = False) -> dict[str, Any]:
    """A field's command-line metadata: its help panel, flag names besides ``--<name-with-dashes>``, other
    setting names (``aliases``) that its environment variable and TOML key also accept, and for a dict setting
    ``pairs``: its flag takes ``KEY=VALUE`` (repeatable) instead of a JSON object."""
    return {"cli": {"panel": panel, "flags": list(flags), "aliases": list(aliases), "pairs": pairs}}
