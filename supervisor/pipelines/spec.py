"""What a pipeline request asks for, checked whole before anything is queued (``InvalidRequest`` says what is wrong).

A step runs when every step in its ``after`` succeeded. ``{{a}}`` in a prompt is step a's output (a map step's: the
JSON list of its outputs, in item order); ``{{item}}`` is a map step's item. A step may name only steps in its
``after`` (so their outputs exist when it starts). ``map`` is a list, or ``"{{a}}"``: step a's output read as a
JSON list. ``affinity: "a"`` runs the step where step a ran when that engine (else its host) has room.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from llmsup.supervisor.core.requests import InvalidRequest

STEP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_-]{0,63})\s*\}\}")
MAX_STEPS = 64
MAX_MAP_ITEMS = 1000
ITEM = "item"


@dataclass(frozen=True)
class StepSpec:
    name: str
    prompt: str
    after: tuple[str, ...] = ()
    pool: str | None = None
    affinity: str | None = None
    map: tuple[str, ...] | str | None = None  # items (rendered as text), or "{{a}}"
    map_concurrency: int | None = None
    deadline_s: float | None = None
    max_tokens: int | None = None
    temperature: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)  # further sampling params (top_p, seed, stop, ...)
    fn: str | None = None  # a registered function to call with the prompt as its input (a python pool runs it)

    @property
    def map_source(self) -> str | None:
        """The step whose output a ``"{{a}}"`` map reads."""
        if isinstance(self.map, str):
            m = PLACEHOLDER.fullmatch(self.map.strip())
            return m.group(1) if m else None
        return None


@dataclass(frozen=True)
class PipelineSpec:
    steps: tuple[StepSpec, ...]
    deadline_s: float | None = None  # bounds the whole pipeline, from its creation
    priority: int = 0

    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def get(self, name: str) -> StepSpec:
        return next(s for s in self.steps if s.name == name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PipelineSpec":
        steps = []
        for raw in data["steps"]:
            raw = dict(raw)
            raw["after"] = tuple(raw.get("after") or ())
            if isinstance(raw.get("map"), list):
                raw["map"] = tuple(raw["map"])
            steps.append(StepSpec(**raw))
        return cls(tuple(steps), data.get("deadline_s"), data.get("priority", 0))


def item_text(item: Any) -> str:
    """A map item as it goes into ``{{item}}``: a string as is, anything else as JSON."""
    return item if isinstance(item, str) else json.dumps(item)


def check(spec: PipelineSpec, pools: list[str], functions: Collection[str] = (),
          function_pools: Sequence[str] = ()) -> PipelineSpec:
    """The spec if it can run, its function steps placed: unique names, known ``after`` steps, no cycle,
    placeholders and map sources among a step's ``after``, affinity to one of them, a known pool, a registered
    function. ``pools``: the model pools (names and served names), ``function_pools``: the pools that run
    functions (a step with ``fn`` runs there: in the first unless it names one; a step without runs on a model)."""
    names = spec.names()
    if not 1 <= len(names) <= MAX_STEPS:
        raise InvalidRequest(f"a pipeline has 1 to {MAX_STEPS} steps")
    for name in names:
        if not STEP_NAME.fullmatch(name) or name == ITEM:
            raise InvalidRequest(f"invalid step name {name[:80]!r}: a letter or _, then up to 63 of A-Z a-z 0-9 _ - "
                                 f"(not {ITEM!r})")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidRequest(f"step names must be unique: {', '.join(dupes)}")
    spec = replace(spec, steps=tuple(place(step, pools, function_pools) for step in spec.steps))
    for step in spec.steps:
        _check_step(step, set(names), [*pools, *function_pools])
        if step.fn is not None and step.fn not in functions:
            raise InvalidRequest(f"step {step.name!r}: no function {step.fn!r}; registered: "
                                 f"{', '.join(sorted(functions)) or 'none (llmsup serve --function NAME=module:callable)'}")
    _check_acyclic(spec)
    return spec


def place(step: StepSpec, pools: Sequence[str], function_pools: Sequence[str]) -> StepSpec:
    """A function step in a pool that runs functions (the first unless it names one), a prompt step on a model."""
    where = f"step {step.name!r}"
    if step.fn is None:
        if step.pool is not None and step.pool in function_pools and step.pool not in pools:
            raise InvalidRequest(f"{where}: pool {step.pool!r} runs functions (backend python): name one with fn, "
                                 f"or a model's pool: {', '.join(pools) or 'none'}")
        if step.pool is None and not [p for p in pools if p not in function_pools]:
            raise InvalidRequest(f"{where}: this server runs functions only: the step names one with fn")
        return step
    if not function_pools:
        raise InvalidRequest(f"{where}: fn {step.fn!r} needs a pool of backend python "
                             "(llmsup serve --pool name=io,backend=python)")
    if step.pool is None:
        return replace(step, pool=function_pools[0])
    if step.pool not in function_pools:
        raise InvalidRequest(f"{where}: pool {step.pool!r} runs a model; fn steps run in a pool of backend python: "
                             f"{', '.join(function_pools)}")
    return step


def _check_step(step: StepSpec, names: set[str], pools: list[str]) -> None:
    where = f"step {step.name!r}"
    unknown = [a for a in step.after if a not in names]
    if unknown:
        raise InvalidRequest(f"{where}: after names unknown steps: {', '.join(unknown)}")
    if step.name in step.after:
        raise InvalidRequest(f"{where}: runs after itself")
    if step.pool is not None and step.pool not in pools:
        raise InvalidRequest(f"{where}: unknown pool {step.pool!r}; pools: {', '.join(pools)}")
    if step.affinity is not None and step.affinity not in step.after:
        raise InvalidRequest(f"{where}: affinity {step.affinity!r} must be one of the steps it runs after")
    allowed = set(step.after) | ({ITEM} if step.map is not None else set())
    for ref in PLACEHOLDER.findall(step.prompt):
        if ref not in allowed:
            hint = "{{item}} needs a map" if ref == ITEM else f"add {ref!r} to its after"
            raise InvalidRequest(f"{where}: prompt uses {{{{{ref}}}}}, which it cannot see ({hint})")
    _check_map(step, where)


def _check_map(step: StepSpec, where: str) -> None:
    if isinstance(step.map, str):
        if step.map_source is None or step.map_source not in step.after:
            raise InvalidRequest(f"{where}: map must be a list or \"{{{{a}}}}\" naming a step it runs after")
    elif step.map is not None and not 1 <= len(step.map) <= MAX_MAP_ITEMS:
        raise InvalidRequest(f"{where}: map takes 1 to {MAX_MAP_ITEMS} items")
    if step.map_concurrency is not None and step.map is None:
        raise InvalidRequest(f"{where}: map_concurrency without a map")


def _check_acyclic(spec: PipelineSpec) -> None:
    after = {s.name: set(s.after) for s in spec.steps}
    done: set[str] = set()
    while len(done) < len(after):
        ready = [n for n, deps in after.items() if n not in done and deps <= done]
        if not ready:
            cycle = sorted(n for n in after if n not in done)
            raise InvalidRequest(f"the steps' after lists form a cycle among: {', '.join(cycle)}")
        done.update(ready)


def render(template: str, outputs: dict[str, str], item: str | None = None) -> str:
    """The prompt with ``{{a}}`` replaced by step a's output and ``{{item}}`` by the item (plain text substitution:
    no template language runs on what a request sends)."""
    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == ITEM and item is not None:
            return item
        return outputs.get(name, m.group(0))

    return PLACEHOLDER.sub(value, template)
