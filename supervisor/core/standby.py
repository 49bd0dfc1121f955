"""Warm standby engines: how many by default, and which one takes a lost engine's place.

A standby is started and loaded like any engine (same backend, model, warm-up)
and given no jobs. When a serving engine is killed, dies or is recycled, a
standby is promoted at once (it keeps its own devices: it is already loaded
there), and the engine launched in the lost one's place, on the lost one's
devices, becomes the next standby. A hang that only SIGKILL ends then costs the
grace period, not an engine start and a model load.
"""

from __future__ import annotations

from llmsup.supervisor.core.engine_state import Engine, EngineState


def default_standby(backend: str, gpus: int, engines: int, gpus_per_engine: int) -> tuple[int, str]:
    """Standbys when the user did not say: (count, why)."""
    if backend == "sim":
        return 0, "sim engines start in about a second and hold nothing (say --standby 1 to hide even that)"
    if backend == "python":
        return 0, "function engines import their functions in well under a second and hold no model"
    if gpus:
        spare = gpus - engines * gpus_per_engine
        if spare >= gpus_per_engine:
            return 1, f"{spare} GPU(s) beyond the serving engines' hold a loaded standby"
        return 0, "every GPU serves: a standby would take GPU memory from a serving engine"
    if backend == "transformers":
        return 1, "a CPU transformers engine idles at no CPU cost and reloads in seconds: keep one loaded"
    return 0, "a vLLM engine on CPU reserves its KV cache and threads even idle"


def pick_standby(pool: list[Engine], host_key: str) -> Engine | None:
    """The standby to promote: one on the lost engine's host first, then the longest-standing one."""
    standbys = [e for e in pool if e.state is EngineState.STANDBY]
    if not standbys:
        return None
    standbys.sort(key=lambda e: (e.host_key != host_key, e.started_at, e.id))
    return standbys[0]
