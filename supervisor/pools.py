"""Engine pools: several models in one server, each with its own engines, backend, standby, slots and GPUs.

A pool is the server's settings with the pool's own over them (``--pool name=small,model=M1,engines=2``, keys as the
settings' names; TOML ``[[pools]]``). Without pools, the server's settings make one pool named ``default``.
Jobs carry the pool they run in and go only to its engines; GPUs are split between pools in the order given, each
pool taking ``engines x gpus_per_engine`` devices of its own (a pool's standbys share its devices): no two pools
share a GPU unless the GPUs run out, which is an error at start, not a silent overlap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode

if TYPE_CHECKING:
    from llmsup.supervisor.settings import Settings

DEFAULT = "default"
FUNCTIONS = "python"  # the backend of pools whose engines run registered functions (no model, no GPU)
# what a pool may set: what its engines are and load (the server's queue, web and security settings are shared)
POOL_KEYS = frozenset({
    "engines", "standby", "backend", "model", "gpus_per_engine", "slots_per_engine", "engine_options", "engine_args",
    "engine_threads", "sim_token_s", "max_model_len", "dtype", "gpu_memory_utilization", "enforce_eager",
    "trust_remote_code", "seed", "chat_template", "served_model_name", "hf_home", "max_jobs_per_engine",
    "max_engine_rss_mb", "engine_nice", "tensor_parallel_size", "max_num_seqs",
})
KEY_ALIASES = {"tensor_parallel_size": "gpus_per_engine", "max_num_seqs": "slots_per_engine"}


def _meta(*flags: str, pairs: bool = False, records: bool = False) -> dict[str, Any]:
    return {"cli": {"panel": "Engines", "flags": list(flags), "aliases": [], "pairs": pairs, "records": records}}


class PoolFields(BaseSettings):
    """The pool settings (a base of :class:`~llmsup.supervisor.settings.Settings`)."""

    pools: Annotated[list[dict[str, Any]], NoDecode] = Field(
        default_factory=list,
        description="an engine pool of its own model: name=NAME,KEY=VALUE,... with keys as the settings' names "
        "(engines, model, backend, gpus_per_engine, standby, slots_per_engine, served_model_name, ...), repeatable; "
        "unset: one pool 'default' of the settings above",
        json_schema_extra=_meta("--pool", records=True),
    )
    functions: dict[str, str] = Field(
        default_factory=dict,
        description="a function pipeline steps may call by name, NAME=module:callable (repeatable); run by the "
        "engines of pools with backend python",
        json_schema_extra=_meta("--function", pairs=True),
    )

    @field_validator("pools", mode="before")
    @classmethod
    def _parse_pools(cls, value: Any) -> Any:
        if isinstance(value, str):  # the environment: a JSON list, or records separated by ';'
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [parse_record(part) for part in text.split(";") if part.strip()]
        return value

    @field_validator("pools")
    @classmethod
    def _check_pools(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names: set[str] = set()
        checked = []
        for entry in value:
            entry = {KEY_ALIASES.get(k.replace("-", "_"), k.replace("-", "_")): v for k, v in entry.items()}
            name = entry.get("name")
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"a pool needs a name (name=NAME): {entry}")
            if name in names:
                raise ValueError(f"two pools named {name!r}")
            names.add(name)
            unknown = set(entry) - POOL_KEYS - {"name"}
            if unknown:
                raise ValueError(f"pool {name!r}: {sorted(unknown)} cannot be set per pool "
                                 f"(per pool: {', '.join(sorted(POOL_KEYS - set(KEY_ALIASES)))})")
            checked.append(entry)
        return checked

    @field_validator("functions")
    @classmethod
    def _check_functions(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            module, sep, attr = str(target).partition(":")
            if not sep or not module or not attr:
                raise ValueError(f"function {name!r}: {target!r} is not module:callable")
        return value


def parse_record(text: str) -> dict[str, Any]:
    """``name=small,model=M1,engines=2`` -> a dict (values as JSON where they parse: numbers, true, ...)."""
    record: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{part!r} of {text!r} is not KEY=VALUE")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        record[key.strip().removeprefix("--").replace("-", "_")] = value
    return record


@dataclass(frozen=True)
class Pool:
    name: str
    settings: Settings  # the server's settings with the pool's own over them
    first_gpu: int = 0  # its devices start at this position of the visible ones: the pools before it hold those before

    @property
    def runs_functions(self) -> bool:
        """Its engines run registered functions (function steps), not a model."""
        return self.settings.backend == FUNCTIONS

    @property
    def gpus(self) -> int:
        """Devices it takes on a GPU host: one group per serving engine (none for a pool of functions)."""
        return 0 if self.runs_functions else self.settings.engines * self.settings.gpus_per_engine


def pools_of(settings: Settings) -> list[Pool]:
    """The server's pools, in the order given (one ``default`` pool when none is)."""
    if not settings.pools:
        return [Pool(DEFAULT, settings)]
    base = settings.model_dump()
    base.update(pools=[], served_model_name=None)
    pools, first = [], 0
    for entry in settings.pools:
        own = {k: v for k, v in entry.items() if k != "name"}
        pool_settings = type(settings).model_validate({**base, **own})
        pools.append(Pool(entry["name"], pool_settings, first))
        first += pools[-1].gpus
    return pools


def check_gpus(pools: list[Pool], gpu_count: int) -> None:
    """Pools on a GPU host must fit its GPUs side by side (raises ValueError naming what each asks)."""
    if gpu_count <= 0 or len(pools) < 2:
        return
    asked = sum(p.gpus for p in pools)
    if asked > gpu_count:
        shares = ", ".join(f"{p.name}: {p.gpus}" for p in pools)
        raise ValueError(f"the pools ask for {asked} GPUs ({shares}) but {gpu_count} are visible: "
                         "give fewer engines or gpus_per_engine to a pool")


def own_devices(pools: list[Pool], pool: Pool, visible: list[str]) -> list[str]:
    """The devices of a pool, of the host's visible ones (named as CUDA_VISIBLE_DEVICES names them): all of them
    with one pool, else its own slice in the order the pools were given."""
    if len(pools) == 1:
        return list(visible)
    return visible[pool.first_gpu:pool.first_gpu + pool.gpus] if visible else []


def model_pools(pools: list[Pool]) -> list[Pool]:
    """The pools that serve a model (every pool when none does: a server of functions only)."""
    return [p for p in pools if not p.runs_functions] or pools


def served_name(pool: Pool) -> str:
    """What clients call the pool's model: its served_model_name, else its model, else the pool's name."""
    return pool.settings.served_model_name or pool.settings.model or pool.name
