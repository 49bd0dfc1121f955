"""What a pool's engines say of the model they serve, filtered to what the configuration says it is.

The web app checks requests against these facts (chat template, context length, logprob limit) and loads the
tokenizer of the model path they name, so they must not come from whichever engine registered first (an engine of a
host that joined may report anything):

- only the engines of the pool asked about count, and only those that report the pool's configured backend and
  model (``auto`` and an unset model accept any);
- the supervisor's own engines (on its host) come first, and engines elsewhere count only while none of its own has
  reported;
- each fact carries ``local``, set here as the driver sees the engine (an engine cannot claim it).

The web side (``web/tokens.py``, ``web/chat.py``) then prefers the configuration itself (model path, chat template,
max_model_len) over any report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from llmsup.supervisor.core.engine_state import Engine
from llmsup.supervisor.pools import Pool, pools_of
from llmsup.supervisor.settings import Settings


def pool_of(settings: Settings, name: str | None) -> Pool:
    """The pool named (unknown or None: the first)."""
    pools = pools_of(settings)
    return next((p for p in pools if p.name == name), pools[0])


def same_model(configured: str | None, reported: Any) -> bool:
    """The model an engine reports is the one configured: equal, or the same directory (engines report a local
    model's absolute path)."""
    if not configured:
        return True
    if not isinstance(reported, str) or not reported:
        return False
    return reported == configured or reported == os.path.abspath(os.path.expanduser(configured))


def pool_facts(settings: Settings, engines: Iterable[Engine], is_local: Callable[[Engine], bool],
               pool: str | None = None) -> list[dict[str, Any]]:
    """The facts of the pool's engines that serve its configured model, its own host's first."""
    chosen = pool_of(settings, pool)
    backend = chosen.settings.backend
    facts = []
    for engine in sorted(engines, key=lambda e: e.id):
        info = engine.backend
        if engine.pool != chosen.name or not info.get("backend"):
            continue
        if backend != "auto" and info.get("backend") != backend:
            continue
        if not same_model(chosen.settings.model, info.get("model")):
            continue
        facts.append({**info, "local": is_local(engine)})
    own = [f for f in facts if f["local"]]
    return own or facts
