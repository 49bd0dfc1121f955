"""vLLM's flags on `llmsup serve`: read by vLLM's own parser, engine flags passed on, the rest implemented or refused
with why (never "No such option", never a silent no-op); vLLM's YAML --config; the API server flags llmsup has."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from llmsup.supervisor.cli import vllm_flags
from llmsup.supervisor.cli.commands import OWN_FLAGS, app
from llmsup.supervisor.settings import load_settings, read_config
from support.inprocess import in_process

pytestmark = pytest.mark.timeout(300)
_vllm_installed = pytest.mark.skipif(not vllm_flags.installed(), reason="vLLM is not installed")


def needs_vllm(test: Callable[..., None]) -> Callable[..., None]:
    """vLLM's own parser: importing vLLM is a model library's import (``real``: ``make test-fast`` leaves it out)."""
    marked: Callable[..., None] = pytest.mark.real(_vllm_installed(test))
    return marked


def serve(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["serve", *args], env=env)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_llmsups_own_arguments_are_split_without_importing_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_flags, "parser", lambda: pytest.fail("vLLM's parser read for llmsup's own options"))
    args = ["m", "--api-key", "sk-x", "--disable-log-requests", "--max-num-seqs", "4", "-tp", "1",
            "--allowed-origins", '["*"]', "--enable-log-requests", "--host=0.0.0.0"]
    assert vllm_flags.split(args, OWN_FLAGS) == vllm_flags.Split(args, [])


@needs_vllm
def test_vllm_flags_are_taken_off_with_their_values() -> None:
    args = ["m", "--enable-prefix-caching", "--max_num_batched_tokens", "4096", "--api-key", "sk-x",
            "--cudagraph-capture-sizes", "1", "2", "--port", "9", "--kv-cache-dtype=auto", "--no-enable-chunked-prefill"]
    parts = vllm_flags.split(args, OWN_FLAGS)
    assert parts.own == ["m", "--api-key", "sk-x", "--port", "9"]
    assert parts.vllm == ["--enable-prefix-caching", "--max-num-batched-tokens", "4096", "--cudagraph-capture-sizes",
                          "1", "2", "--kv-cache-dtype=auto", "--no-enable-chunked-prefill"]
    flags = vllm_flags.interpret(parts.vllm)
    assert flags.engine_args == {"enable_prefix_caching": True, "max_num_batched_tokens": 4096,
                                 "cudagraph_capture_sizes": [1, 2], "kv_cache_dtype": "auto",
                                 "enable_chunked_prefill": False}  # vLLM's types, from vLLM's parser


@needs_vllm
@pytest.mark.parametrize(("tokens", "says"), [
    (["--tool-parser-plugin", "x.py"], "--tool-parser-plugin is a flag of vLLM's own API server that llmsup does not"),
    (["--headless"], "--headless is a flag of vLLM's own API server that llmsup does not implement"),
    (["--max-num-batched-tokens", "lots"], "invalid human_readable_int value: 'lots'"),
])
def test_what_cannot_apply_is_refused_saying_why(tokens: list[str], says: str) -> None:
    with pytest.raises(vllm_flags.FlagError, match=says.replace("(", r"\(")):
        vllm_flags.interpret(tokens)


@needs_vllm
def test_an_api_server_flag_at_its_default_is_accepted() -> None:
    assert vllm_flags.interpret(["--response-role", "assistant"]).engine_args == {}
    assert vllm_flags.interpret(["--no-enable-lora"]).engine_args == {"enable_lora": False}  # an engine flag


@needs_vllm
def test_serve_refuses_engine_flags_on_a_backend_that_is_not_vllm(tmp_path: Path) -> None:
    code, out = serve("--backend", "sim", "--enable-prefix-caching", "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "No such option" not in out
    assert "--enable-prefix-caching: vLLM engine option that the sim backend cannot apply (it is not vLLM)" in out
    code, out = serve("--backend", "sim", "--enable-lora", "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "--enable-lora: vLLM engine option that the sim backend cannot apply" in out
    code, out = serve("--backend", "sim", "--no-such-flag-anywhere", "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "neither llmsup's nor vLLM's" in out
    assert not (tmp_path / "run").exists()  # refused before anything started


def test_engine_args_on_a_backend_that_is_not_vllm_are_refused(tmp_path: Path) -> None:
    code, out = serve("--backend", "transformers", "--engine-arg", "kv_cache_dtype=fp8", "--run-dir", str(tmp_path))
    assert code == 2 and "the transformers backend cannot apply" in out


@needs_vllm
def test_help_vllm_lists_vllms_flags_with_vllms_help() -> None:
    code, out = serve("--help-vllm")
    assert code == 0 and "--enable-prefix-caching" in out and "--max-num-batched-tokens" in out
    assert "vLLM engine flags" in out and "--headless" in out


# --config: TOML or vLLM's YAML --------------------------------------------------------------------------------------


def test_config_reads_vllms_yaml_and_toml(tmp_path: Path) -> None:
    yaml_file = tmp_path / "config.yaml"
    yaml_file.write_text("port: 8123\nmax-num-seqs: 4\ntensor-parallel-size: 1\napi-key: sk-file\n")
    values = read_config(yaml_file)
    assert values == {"port": 8123, "max_num_seqs": 4, "tensor_parallel_size": 1, "api_key": "sk-file"}
    settings = load_settings(None, {"port": 8123, "max_num_seqs": 4, "tensor_parallel_size": 1})
    assert settings.port == 8123 and settings.slots_per_engine == 4
    toml_file = tmp_path / "config.toml"
    toml_file.write_text('[llmsup]\nport = 8124\nallowed_origins = ["https://a.example", "https://b.example"]\n')
    assert load_settings(toml_file).allowed_origins == ["https://a.example", "https://b.example"]
    (tmp_path / "bad").write_text("[[[ not : either")
    with pytest.raises(ValueError, match="neither TOML"):
        read_config(tmp_path / "bad")


@needs_vllm
def test_a_yaml_configs_vllm_flags_are_vllm_flags(tmp_path: Path) -> None:
    assert vllm_flags.tokens_of({"enable_prefix_caching": True, "max_num_batched_tokens": 4096,
                                 "enable_chunked_prefill": False, "cudagraph_capture_sizes": [1, 2]}) == [
        "--enable-prefix-caching", "--max-num-batched-tokens", "4096", "--no-enable-chunked-prefill",
        "--cudagraph-capture-sizes", "1", "2"]
    config = tmp_path / "vllm.yaml"
    config.write_text("enable-prefix-caching: true\nbackend: sim\n")
    code, out = serve("--config", str(config), "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "--enable-prefix-caching: vLLM engine option that the sim backend cannot apply" in out


# the API server flags llmsup implements ---------------------------------------------------------------------------


def test_allowed_origins_takes_vllms_json_list_or_commas() -> None:
    from llmsup.supervisor.cli.options import given_settings, setting_options

    options = setting_options()
    assert given_settings(options, {"allowed_origins": ['["https://a.example", "https://b.example"]']}) == {
        "allowed_origins": ["https://a.example", "https://b.example"]}
    assert given_settings(options, {"allowed_origins": ["https://a.example,https://b.example"]}) == {
        "allowed_origins": ["https://a.example", "https://b.example"]}


async def test_cors_request_ids_and_docs_switch(tmp_path: Path) -> None:
    async with in_process(tmp_path / "a", allowed_origins=["https://app.example"], enable_request_id_headers=True) as a:
        pre = await a.http.options("/v1/models", headers={"Origin": "https://app.example",
                                                          "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
        other = await a.http.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        mine = await a.http.get("/v1/models", headers={"X-Request-Id": "req-42"})
        assert mine.headers["x-request-id"] == "req-42"
        assert len((await a.http.get("/version")).headers["x-request-id"]) == 32
        assert (await a.http.get("/docs")).status_code == 200
    async with in_process(tmp_path / "b", disable_fastapi_docs=True) as b:
        assert "x-request-id" not in (await b.http.get("/version")).headers
        assert (await b.http.get("/docs")).status_code == 404 and (await b.http.get("/openapi.json")).status_code == 404


async def test_keyless_routes_and_keyed_ones_on_loopback(tmp_path: Path) -> None:
    async with in_process(tmp_path) as a:
        bare = httpx.AsyncClient(transport=httpx.ASGITransport(app=a.app), base_url="http://127.0.0.1")
        async with bare:
            for path in ("/health", "/ping", "/version", "/healthz", "/dashboard"):
                assert (await bare.get(path)).status_code in (200, 503), path
            assert (await bare.post("/ping")).status_code in (200, 503)
            assert (await bare.post("/v1/jobs", json={"prompt": "x"})).status_code == 401
            assert (await bare.get("/metrics")).status_code == 401
        assert (await a.http.post("/v1/jobs", json={"prompt": "x"})).status_code == 202  # the run dir's key
    async with in_process(tmp_path / "open", metrics_open=True) as b:
        assert (await httpx.AsyncClient(transport=httpx.ASGITransport(app=b.app),
                                        base_url="http://127.0.0.1").get("/metrics")).status_code == 200


def test_request_log_carries_the_prompt_only_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    from llmsup.supervisor.core import joblog
    from llmsup.supervisor.core.jobs import Job, JobParams

    job = Job(prompt="a secret prompt", params=JobParams(max_tokens=3), deadline_s=5, queue_timeout_s=5)
    with caplog.at_level("INFO", "llmsup.jobs"):
        joblog.submitted(job)
        joblog.submitted(job, 8)
    assert "secret" not in caplog.records[0].getMessage()
    assert "prompt 'a secret'" in caplog.records[1].getMessage() and "prompt" not in json.dumps(caplog.records[0].args)
