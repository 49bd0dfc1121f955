"""Session fixtures for tests that need the tiny local model (import them into a test module).

    from fixtures_models import backend_config, models_run_dir_fixture, tiny_model_fixture  # noqa: F401

(The functions are named ``*_fixture`` and registered under their fixture names,
so that a test's ``tiny_model`` parameter does not shadow an imported name.)
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any

import pytest

from llmsup.engines.tinymodel import ensure_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session", name="models_run_dir")
def models_run_dir_fixture(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A run directory shared by the session (caches, models)."""
    return tmp_path_factory.mktemp("llmsup-run")


@pytest.fixture(scope="session", name="tiny_model")
def tiny_model_fixture(models_run_dir: pathlib.Path) -> str:
    """The tiny random Llama, built once per session; returns its directory."""
    t0 = time.monotonic()
    path = ensure_tiny_model(str(models_run_dir / "models" / "tiny-llama"))
    print(f"tiny model built in {time.monotonic() - t0:.2f}s at {path}")
    return path


def backend_config(backend: str, model: str, run_dir: pathlib.Path, **extra: Any) -> dict[str, Any]:
    """An engine config as engines.runtime.make_backend receives it (CPU engine)."""
    config: dict[str, Any] = {
        "backend": backend,
        "model": model,
        "run_dir": str(run_dir),
        "gpu": "",
        "threads": None,
        "options": {},
    }
    config.update(extra)
    return config
