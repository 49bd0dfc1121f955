"""Stands in for vLLM's ``tests/conftest.py`` when its pooling entrypoint tests run against llmsup (vLLM's own needs
its test-only dependencies and, for ``HfRunner``, the hub models the tests name). The tests import ``HfRunner`` and
take the ``hf_runner`` fixture to compute reference outputs with the real hub model in transformers: here an
``HfRunner`` cannot be made (the test fails saying why); the tests that only talk to the server run."""

from __future__ import annotations

from typing import Any

import pytest


class HfRunner:
    """vLLM's reference runner of a hub model in transformers: not available offline on the tiny model."""

    def __init__(self, model_name: str, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"HfRunner({model_name!r}): the hub model's reference outputs cannot be computed offline "
                           "(the server serves the tiny local model under that name)")


@pytest.fixture(scope="session")
def hf_runner() -> type[HfRunner]:
    return HfRunner
