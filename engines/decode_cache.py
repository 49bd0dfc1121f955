"""The KV cache of the transformers backend's token loop, and its compiled one-token step.

A dynamic cache (transformers' ``DynamicCache``) grows by one position a token, by concatenation: every token
copies the whole cache again, so a token's cost grows with the answer's length (measured on a GPU: 82 tok/s at
256 tokens, 13.5 at 2,000 with plain ``generate``). A static cache (``StaticCache``) is allocated once per length
bucket (powers of two from :data:`BUCKET` positions: a short answer never attends over a long one's cache), the
latest :data:`KEPT` kept between requests (reset, not reallocated), and written in place; its fixed shapes also
let ``torch.compile`` capture the one-token step as a CUDA graph, which is where compiling pays (on the CPU it
costs a long warm-up and gains little). Defaults (``options``): ``kv_cache`` ``"auto"`` (static on a GPU,
dynamic on the CPU) and ``compile`` ``"auto"`` (on a GPU with a static cache). A compiled step that fails is
dropped for the plain one, once, with a warning. Figures: bench/bench_decode.py (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("llmsup.engine")
BUCKET = 256  # the shortest static cache; longer ones double (few shapes to compile)
KEPT = 3  # static caches kept between requests, the latest used


def bucketed(length: int) -> int:
    size = BUCKET
    while size < length:
        size *= 2
    return size


def choose(option: Any, on_gpu: bool) -> bool:
    """An ``"auto"`` / bool option: on a GPU for auto."""
    if option in (None, "auto"):
        return on_gpu
    if isinstance(option, str):
        return option.lower() in ("1", "true", "on", "yes", "static")
    return bool(option)


class DecodeCache:
    """Hands the token loop a cache per request and runs the model's forward on it (a static cache: with its
    positions; a one-token step: compiled when asked)."""

    def __init__(self, model: Any, device: str, static: bool, compiled: bool) -> None:
        self.model = model
        self.device = device
        self.static = static
        self._caches: dict[int, Any] = {}  # positions -> static cache, kept between requests (latest used last)
        self._step: Any = None
        if static and compiled:
            import torch

            self._step = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)

    @property
    def kind(self) -> str:
        return ("static" if self.static else "dynamic") + (", compiled" if self._step is not None else "")

    def begin(self, length: int) -> Any:
        """A cache for a request that needs ``length`` positions (prompt and output)."""
        from transformers import DynamicCache, StaticCache

        if not self.static:
            return DynamicCache(config=self.model.config)
        size = bucketed(length)
        cache = self._caches.pop(size, None)
        if cache is None:
            while len(self._caches) >= KEPT:
                del self._caches[next(iter(self._caches))]  # the least recently used one's memory first
            cache = StaticCache(config=self.model.config, max_cache_len=size)
        else:
            cache.reset()
        self._caches[size] = cache
        return cache

    def forward(self, input_ids: Any, cache: Any, position: int) -> Any:
        """The logits of each input position (``position``: where the first of them goes in the cache)."""
        import torch

        kwargs: dict[str, Any] = {"input_ids": input_ids, "past_key_values": cache, "use_cache": True}
        if self.static:
            kwargs["cache_position"] = torch.arange(position, position + input_ids.shape[1], device=self.device)
        if self._step is not None and input_ids.shape[1] == 1:
            try:
                return self._step(**kwargs).logits[0].clone()  # a CUDA graph's output is overwritten by the next run
            except Exception as exc:  # noqa: BLE001 - any compile failure: the plain step (KeyboardInterrupt passes)
                log.warning("transformers: the compiled decode step failed (%s: %s); running uncompiled",
                            type(exc).__name__, exc)
                self._step = None
        return self.model(**kwargs).logits[0]
