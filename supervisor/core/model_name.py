"""The served model name: what clients call the model (OpenAI routes) and the ``model_name`` label of metrics."""

from __future__ import annotations

from collections.abc import Iterable

from llmsup.supervisor.core.engine_state import Engine
from llmsup.supervisor.pools import model_pools, pools_of, served_name
from llmsup.supervisor.settings import Settings

UNKNOWN = "default"  # no name given and no engine loaded yet


def served_model_names(settings: Settings, engines: Iterable[Engine]) -> list[str]:
    """Every name the model answers to: ``served_model_name`` (several, comma-separated, as vLLM takes several;
    the first is the one responses and metrics carry), else the one of :func:`served_model_name`."""
    names = [n.strip() for n in (settings.served_model_name or "").split(",") if n.strip()]
    return names or [served_model_name(settings, engines)]


def served_model_name(settings: Settings, engines: Iterable[Engine]) -> str:
    """``served_model_name`` (its first name), else ``--model``, else the backend named, else the model the engines
    loaded."""
    given = [n.strip() for n in (settings.served_model_name or "").split(",") if n.strip()]
    name = given[0] if given else settings.model or (settings.backend if settings.backend != "auto" else None)
    if name is None:
        name = next((e.backend["model"] for e in engines if e.backend.get("model")), None)
    return name or UNKNOWN


def served_pools(settings: Settings, engines: Iterable[Engine]) -> dict[str, str]:
    """Each model pool's served model name -> the pool's name (one pool: today's served name -> ``default``); pools of
    functions serve no model."""
    pools = model_pools(pools_of(settings))
    if len(pools) == 1:  # every alias of the one model
        return {name: pools[0].name for name in served_model_names(settings, engines)}
    return {served_name(pool): pool.name for pool in pools}


def pool_named(settings: Settings, engines: Iterable[Engine], name: str | None) -> str | None:
    """The pool a name means: a pool's own name, or its model's served name (None: no such pool); no name: the
    first pool of a model."""
    pools = served_pools(settings, engines)
    if name is None:
        return next(iter(pools.values()))
    return name if name in {p.name for p in pools_of(settings)} else pools.get(name)


def pool_model_name(settings: Settings, engines: Iterable[Engine], pool: str) -> str:
    """The ``model_name`` a pool's metrics carry: its served model name (the first), else its name."""
    pools = pools_of(settings)
    if len(pools) == 1:
        return served_model_name(settings, engines)
    named = next((p for p in pools if p.name == pool), None)
    if named is None or named.runs_functions:
        return pool
    return served_name(named).split(",")[0].strip() or pool
