"""When a model cannot load: the start-up gives up on the same load error from every engine, or after a bounded
number of failed loads, instead of launching replacements forever.

Pure decisions over the load errors seen since the start (``EngineOwner.start_failures``, in the order they came);
the shell (``Supervisor.wait_for_engines``) asks :func:`give_up` while it waits and ends the start with
:class:`EngineStartFailed`, whose message is the engine's error on one line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

TRIES_PER_ENGINE = 3  # failed loads per expected engine before the start gives up whatever the errors say
ERROR_CHARS = 2000  # the most of an engine's error that is shown


class EngineStartFailed(RuntimeError):
    """No engine could load the model; the message is the engine's own error, on one line."""


def one_line(why: str) -> str:
    """An engine's error on one line: its last meaningful line (a remote traceback ends with the exception), the
    ``init:`` prefix and IPyParallel's wrapping removed."""
    text = why.removeprefix("init: ").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        text = lines[-1]
    text = re.sub(r"^RemoteError: \[[^\]]*\]:? ", "", text)  # ipyparallel's "RemoteError: [0:apply] OSError: ..."
    text = re.sub(r"\s+", " ", text)
    return text[:ERROR_CHARS]


def give_up(failures: list[str], expected: int, serving: int) -> str | None:
    """The error to stop on, or None to go on waiting: none serves, and either the latest ``expected`` loads all
    failed with one same error (every engine tried), or ``TRIES_PER_ENGINE`` failed loads per engine happened."""
    if serving or not failures:
        return None
    need = max(1, expected)
    latest = [one_line(why) for why in failures[-need:]]
    if len(failures) >= need and len(set(latest)) == 1:
        return latest[-1]
    if len(failures) >= TRIES_PER_ENGINE * need:
        return one_line(failures[-1])
    return None


def pool_give_up(failures: Mapping[str, list[str]], expected: Mapping[str, int], serving: Mapping[str, int]) -> str | None:
    """With several pools: the error to stop on when any one pool gives up (:func:`give_up` over its own engines'
    loads), named by its pool; the others serving does not keep a pool that cannot start waiting."""
    for pool, n in expected.items():
        error = give_up(failures.get(pool, []), n, serving.get(pool, 0))
        if error is not None:
            return f"pool {pool}: {error}"
    return None
