"""What the engine side keeps per engine pool: its settings, what its engines load, slots, standbys and devices."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmsup.engines import placement
from llmsup.supervisor.core.standby import default_standby
from llmsup.supervisor.pools import DEFAULT, check_gpus, own_devices, pools_of
from llmsup.supervisor.settings import Settings

log = logging.getLogger("llmsup.engines")


VLLM_SLOTS_UNTIL_LOADED = 256  # vLLM's default on most devices; each engine then reports its own (below)


def default_slots(backend: str) -> int:
    """Jobs at once per engine when not set: vLLM fills a batch (as many as vLLM's own ``max_num_seqs`` default for
    the engine's device, which the engine reports when loaded), the others run one job at a time."""
    return VLLM_SLOTS_UNTIL_LOADED if backend == "vllm" else 1


@dataclass
class PoolPlan:
    name: str
    settings: Settings  # the server's settings with the pool's own over them
    engine_config: dict[str, Any]  # what each of its engines loads
    slots: int = 1
    slots_from_engine: bool = False  # not set: each engine's backend reports its own (vLLM's max_num_seqs)
    standby: int = 0
    gpus: tuple[str, ...] = ()  # devices of its own, as CUDA_VISIBLE_DEVICES names them (none: on the CPU)
    memory_shares: dict[str, float] = field(default_factory=dict)  # devices -> gpu_memory_utilization there

    @property
    def batched(self) -> bool:
        return self.slots > 1

    @property
    def wanted(self) -> int:
        """Engines of its own to keep: serving and standby."""
        return self.settings.engines + self.standby

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    def devices(self, rank: int) -> str:
        """The devices of its engine with this host-local rank (within the pool)."""
        group = placement.devices_for_rank(rank, len(self.gpus), self.settings.gpus_per_engine)
        return placement.name_group(group, self.gpus)


def plans_for(settings: Settings, engine_config: dict[str, Any], gpus: int | Sequence[str],
              can_launch: bool) -> list[PoolPlan]:
    """One plan per pool, over the host's visible devices (``gpus``: their names, or their count); raises
    ValueError when the pools ask for more GPUs than there are."""
    pools = pools_of(settings)
    visible = placement.device_names(gpus)
    check_gpus(pools, len(visible))
    plans = []
    for pool in pools:
        s = pool.settings
        config = engine_config if pool.name == DEFAULT else {**engine_config, **s.for_engines()}
        backend = config.get("backend", "sim")
        if backend == "python":  # the registered functions its engines import
            config = {**config, "functions": dict(s.functions)}
        own = own_devices(pools, pool, visible)
        if s.standby is not None:
            standby, why = s.standby, "--standby"
        else:
            standby, why = default_standby(backend, len(own), s.engines, s.gpus_per_engine)
        if can_launch:
            log.info("standby engines%s: %d (%s)", "" if pool.name == DEFAULT else f" of pool {pool.name}", standby, why)
        else:
            standby = 0  # engines of a joined cluster are started (and kept) by someone else
        plans.append(PoolPlan(pool.name, s, config, s.slots_per_engine or default_slots(backend),
                              s.slots_per_engine is None and backend == "vllm", standby, tuple(own)))
    return plans
