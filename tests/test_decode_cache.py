"""The transformers backend's static KV cache: the same greedy tokens as the dynamic one, buckets reused."""

from __future__ import annotations

import pytest

from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from llmsup.engines.decode_cache import bucketed
from llmsup.engines.protocol import GenParams

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]


def test_buckets_double_from_256() -> None:
    assert [bucketed(n) for n in (1, 256, 257, 1000, 2049)] == [256, 256, 512, 1024, 4096]


def test_static_and_dynamic_caches_give_the_same_tokens(tiny_model: str) -> None:  # noqa: F811
    from llmsup.engines.transformers_backend import TransformersBackend

    tokens = {}
    for kind in ("dynamic", "static"):
        backend = TransformersBackend({"model": tiny_model, "gpu": "", "options": {"kv_cache": kind}})
        backend.load()
        assert backend.describe()["kv_cache"] == kind
        tokens[kind] = [backend.generate(prompt, GenParams(max_tokens=n, ignore_eos=True, return_token_ids=True),
                                         lambda *token: None).token_ids for prompt, n in (("a job", 300), ("b", 20))]
    assert tokens["dynamic"] == tokens["static"]
