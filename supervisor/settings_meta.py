"""How a setting shows on the command line (its help panel and extra flag names, see ``supervisor/settings.py``) and
how a list setting's text is read."""

from __future__ import annotations

import json
from typing import Any

from pydantic.fields import FieldInfo

# help panels of `llmsup serve --help`
SERVER, ENGINES, MODEL, JOBS, SECURITY = "Server", "Engines", "Model", "Jobs and deadlines", "Security"
FRONTEND = "HTTP server (vLLM's API server flags)"


def cli(panel: str, *flags: str, aliases: tuple[str, ...] = (), pairs: bool = False) -> dict[str, Any]:
    """A field's command-line metadata: its help panel, flag names besides ``--<name-with-dashes>``, other
    setting names (``aliases``) that its environment variable and TOML key also accept, and for a dict setting
    ``pairs``: its flag takes ``KEY=VALUE`` (repeatable) instead of a JSON object."""
    return {"cli": {"panel": panel, "flags": list(flags), "aliases": list(aliases), "pairs": pairs}}


def cli_meta(field: FieldInfo) -> dict[str, Any]:
    """The field's :func:`cli` metadata ({} when it declares none)."""
    extra = field.json_schema_extra
    meta = extra.get("cli") if isinstance(extra, dict) else None
    return meta if isinstance(meta, dict) else {}


def split_list(text: str) -> list[str]:
    """A list setting's text: a JSON list (vLLM's form, ``'["a", "b"]'``), else comma-separated."""
    if text.strip().startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, list):
            return [str(item) for item in value]
    return [name.strip() for name in text.split(",") if name.strip()]
