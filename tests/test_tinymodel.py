"""The tiny local model: built offline, loadable, idempotent, safe when two engines race to build it."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from llmsup.engines.tinymodel import MARKER, ensure_tiny_model, is_tiny_model

pytestmark = pytest.mark.real  # real processes (see tests/conftest.py)

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_tiny_model_files_and_size(tiny_model: str) -> None:
    names = set(os.listdir(tiny_model))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER} <= names
    info = json.loads((pathlib.Path(tiny_model) / MARKER).read_text())
    assert 4_000_000 < info["parameters"] < 7_000_000 and info["vocab_size"] == 2000
    assert "random" in info["warning"]
    config = json.loads((pathlib.Path(tiny_model) / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["hidden_size"] == 256
    assert config["num_hidden_layers"] == 4


@pytest.mark.timeout(120)
def test_tokenizer_round_trip_and_chat_template(tiny_model: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    text = "Hello world, the engine streams 123 tokens. Ünïcödé ✓"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and tok.eos_token_id is not None and tok.pad_token_id is not None
    assert tok.decode(ids, skip_special_tokens=True) == text  # byte-level: any text round-trips
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|user|>\nhi<|eos|>\n<|assistant|>\n"
    assert tok(chat).input_ids.count(tok.bos_token_id) == 1  # encoding the rendered chat adds exactly one bos


@pytest.mark.timeout(120)
def test_model_loads_offline_with_auto_classes(tiny_model: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    out = model(input_ids=torch.tensor([[0, 5, 6]])).logits
    assert out.shape == (1, 3, 2000) and torch.isfinite(out).all()


@pytest.mark.timeout(120)
def test_ensure_is_idempotent(tiny_model: str) -> None:
    weights = pathlib.Path(tiny_model) / "model.safetensors"
    before = weights.stat().st_mtime_ns
    t0 = time.monotonic()
    assert ensure_tiny_model(tiny_model) == tiny_model
    assert time.monotonic() - t0 < 0.5 and weights.stat().st_mtime_ns == before


@pytest.mark.timeout(120)
def test_incomplete_leftover_is_rebuilt(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "tiny"
    target.mkdir()
    (target / "config.json").write_text("{}")  # a build that died half-way: no marker
    t0 = time.monotonic()
    path = ensure_tiny_model(str(target))
    print(f"tiny model build: {time.monotonic() - t0:.2f}s")
    assert is_tiny_model(path) and (target / "model.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tiny-build-")]  # no temp dir left


@pytest.mark.timeout(180)
def test_two_processes_racing_build_one_model(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "models" / "tiny-llama"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}  # no hub access needed at all
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "llmsup.engines.tinymodel", str(target)]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=150)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum("built the tiny local model" in out for out in outputs) == 1, outputs  # one built, one waited
    assert all("random" in out for out in outputs)
    assert is_tiny_model(str(target))
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny-llama", "tiny-llama.lock"]


@pytest.mark.timeout(60)
def test_cli_usage_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmsup.engines.tinymodel"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=50,
        check=False,
    )
    assert out.returncode == 2 and "usage" in out.stderr
