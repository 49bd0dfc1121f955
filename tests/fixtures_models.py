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

from llmsup.engines.tinymodel import ensure_tiny_cross_encoder, ensure_tiny_embedder, ensure_tiny_model

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


def build_tiny_lora(model_dir: str, out_dir: str, rank: int = 8, seed: int = 0) -> str:
    """A LoRA adapter for the tiny model in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``,
    the files ``peft``'s ``save_pretrained`` writes), on every layer's q_proj and v_proj, with random A and B (a
    fresh PEFT adapter's B is zeros: it would change nothing), so the adapted model's text differs."""
    import json

    import torch
    from safetensors.torch import save_file

    config = json.loads(pathlib.Path(model_dir, "config.json").read_text())
    hidden = config["hidden_size"]
    kv = config["num_key_value_heads"] * config.get("head_dim", hidden // config["num_attention_heads"])
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for proj, out in (("q_proj", hidden), ("v_proj", kv)):
            key = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen) * 0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(out, rank, generator=gen) * 0.5
    path = pathlib.Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "base_model_name_or_path": model_dir,
        "fan_in_fan_out": False, "modules_to_save": None, "use_rslora": False, "use_dora": False}))
    return str(path)


@pytest.fixture(scope="session", name="tiny_lora")
def tiny_lora_fixture(tiny_model: str, models_run_dir: pathlib.Path) -> str:
    """A random LoRA adapter of the tiny model, built once per session; returns its directory."""
    return build_tiny_lora(tiny_model, str(models_run_dir / "models" / "tiny-lora"))



def build_tiny_second_model(model_dir: str, out_dir: str) -> str:
    """A second tiny causal LM, unlike the tiny model in its config (2 layers, hidden 128, a context of 512 tokens)
    and its random weights (another seed), with the tiny model's tokenizer: a second model to serve beside the first.
    Built once; returns its directory."""
    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir
    import shutil
    import tempfile

    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(model_dir)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 2, 128, 256
    config.num_attention_heads = config.num_key_value_heads = 2
    config.max_position_embeddings = 512
    torch.manual_seed(4242)
    parent = pathlib.Path(out_dir).parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tiny-second-", dir=parent)
    try:
        model = LlamaForCausalLM(config)
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(model_dir, local_files_only=True).save_pretrained(tmp)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


@pytest.fixture(scope="session", name="tiny_model_b")
def tiny_model_b_fixture(tiny_model: str, models_run_dir: pathlib.Path) -> str:
    """A second tiny model (``build_tiny_second_model``), built once per session; returns its directory."""
    return build_tiny_second_model(tiny_model, str(models_run_dir / "models" / "tiny-llama-b"))


def build_tiny_embedder(model_dir: str, out_dir: str) -> str:
    """The tiny model as a Matryoshka embedding model (``engines.tinymodel.ensure_tiny_embedder``)."""
    return ensure_tiny_embedder(model_dir, out_dir)


def build_tiny_cross_encoder(model_dir: str, out_dir: str) -> str:
    """A tiny one-label classifier: a cross-encoder (``engines.tinymodel.ensure_tiny_cross_encoder``)."""
    return ensure_tiny_cross_encoder(model_dir, out_dir)
