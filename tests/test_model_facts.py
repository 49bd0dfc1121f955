"""Model facts (chat template, context length, logprob limit, tokenizer path) come from the pool's configured model:
the pool's engines that report it, the supervisor's own host's first; never whichever engine registered first."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from llmsup.supervisor.core.engine_state import Engine
from llmsup.supervisor.core.model_facts import pool_facts
from llmsup.supervisor.inprocess import InProcessSupervisor
from llmsup.supervisor.settings import Settings
from llmsup.web import tokens
from llmsup.web.chat import ModelTemplate, SimpleTemplate, template_for

pytestmark = pytest.mark.timeout(30)
TWO_POOLS = [{"name": "a", "model": "org/a", "backend": "sim"}, {"name": "b", "model": "org/b", "backend": "sim"}]


def engine(eid: int, host_key: str, pool: str = "default", **backend: Any) -> Engine:
    return Engine(id=eid, host=host_key, host_key=host_key, pid=1000 + eid, gpu="", backend=backend, pool=pool)


def test_only_the_pools_engines_of_its_configured_model_count_its_own_host_first(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path, pools=TWO_POOLS)
    joined = engine(1, "joined", "a", backend="sim", model="evil/model", max_model_len=1)  # registered first
    other_backend = engine(2, "joined", "a", backend="transformers", model="org/a")
    remote = engine(3, "elsewhere", "a", backend="sim", model="org/a", max_model_len=100)
    own = engine(4, "here", "a", backend="sim", model="org/a", max_model_len=200)
    pool_b = engine(5, "here", "b", backend="sim", model="org/b", max_model_len=300)
    is_local = lambda e: e.host_key == "here"  # noqa: E731 - the driver's answer, as a function
    engines = [joined, other_backend, remote, own, pool_b]
    assert pool_facts(settings, engines, is_local, "a") == [{**own.backend, "local": True}]
    assert pool_facts(settings, engines, is_local, None) == pool_facts(settings, engines, is_local, "a")  # the first
    assert [f["max_model_len"] for f in pool_facts(settings, [joined, remote], is_local, "a")] == [100]
    assert [f["model"] for f in pool_facts(settings, engines, is_local, "b")] == ["org/b"]
    assert all(not f["local"] for f in pool_facts(settings, [remote], lambda e: False, "a"))
    (tmp_path / "m").mkdir()
    relative = Settings(run_dir=tmp_path, model="./m", backend="sim")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:  # engines report a local model by its absolute path
        assert pool_facts(relative, [engine(1, "here", backend="sim", model=str(tmp_path / "m"))], is_local)
    finally:
        os.chdir(cwd)


def supervisor(tmp_path: Path, *engines: Engine, **settings: Any) -> InProcessSupervisor:
    sup = InProcessSupervisor(Settings(run_dir=tmp_path, backend="sim", **settings))
    for e in engines:
        sup.pool.add(e)
    return sup


def test_the_web_apps_facts_are_the_configured_models(tmp_path: Path) -> None:
    evil = engine(1, "joined", backend="sim", model="attacker/model", max_model_len=3, max_logprobs=100000,
                  chat_template="{{ 'from the joined host' }}")
    good = engine(2, "joined", backend="sim", model="org/model", max_model_len=500, max_logprobs=20,
                  chat_template="{{ 'published' }}")
    tight = engine(3, "joined", backend="sim", model="org/model", max_model_len=400, max_logprobs=5)
    sup = supervisor(tmp_path, evil, good, tight, model="org/model")
    model = tokens.served_model(sup)
    assert model is not None and model.path == "org/model"
    assert (model.max_model_len, model.max_logprobs) == (400, 5)  # the tightest of the engines of that model
    template = template_for(sup)
    assert isinstance(template, ModelTemplate) and template.source == "{{ 'published' }}"
    configured = supervisor(tmp_path / "c", evil, good, model="org/model", max_model_len=64,
                            chat_template="{{ 'configured' }}")
    assert template_for(configured).source == "{{ 'configured' }}"  # type: ignore[attr-defined]
    assert tokens.served_model(configured).max_model_len == 64  # type: ignore[union-attr]
    assert isinstance(template_for(supervisor(tmp_path / "e", evil, model="org/model")), SimpleTemplate)
    assert tokens.served_model(supervisor(tmp_path / "n", evil, model="org/model")) is None


def test_no_tokenizer_path_from_another_host_when_no_model_is_configured(tmp_path: Path) -> None:
    remote = engine(1, "joined", backend="sim", model="attacker/tokenizer")
    model = tokens.served_model(supervisor(tmp_path, remote))
    assert model is not None and model.path == ""  # the web process loads nothing a remote engine names


def test_each_pool_has_its_own_facts(tmp_path: Path) -> None:
    a = engine(1, "joined", "a", backend="sim", model="org/a", max_model_len=100)
    b = engine(2, "joined", "b", backend="sim", model="org/b", max_model_len=200)
    sup = supervisor(tmp_path, a, b, pools=TWO_POOLS)
    assert tokens.pool_for(sup, "org/b") == "b" and tokens.pool_for(sup, None) == "a"
    assert tokens.served_model(sup, "b").max_model_len == 200  # type: ignore[union-attr]
    assert tokens.served_model(sup, "a").max_model_len == 100  # type: ignore[union-attr]
