"""A vLLM engine's capacity is vLLM's own default for its device (asked of vLLM as vllm serve gets it), not a
constant: on this CPU machine, vLLM-CPU's max_num_seqs for its OpenAI server."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_settings
from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from llmsup.supervisor.service import Supervisor

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(300)]


async def test_a_vllm_engine_batches_as_many_as_vllm_serve_would(tmp_path: Path, tiny_model: str) -> None:  # noqa: F811
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    expected = EngineArgs.get_batch_defaults(1)[1][UsageContext.OPENAI_API_SERVER]
    supervisor = Supervisor(make_settings(tmp_path / "run", engines=1, standby=0, backend="vllm", model=tiny_model,
                                          engine_start_timeout_s=240))
    try:
        await supervisor.start()
        (view,) = supervisor.engine_views()
        assert view["slots"] == expected
        assert supervisor.model_facts()[0]["max_num_seqs"] == expected
        assert supervisor.model_facts()[0]["sampling_defaults"] == {}  # the tiny model's config sets none
    finally:
        await supervisor.stop()
