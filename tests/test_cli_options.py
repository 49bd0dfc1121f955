"""`llmsup serve`'s options, generated from Settings: every setting a flag, vLLM's names, panels, aliases, the
environment check, and the model settings reaching what engines get (no server started)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import Field
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

from llmsup.supervisor.cli import commands as cli
from llmsup.supervisor.cli import logsetup
from llmsup.supervisor.cli import options as cli_options
from llmsup.supervisor.settings import SECURITY, Settings, load_settings, unknown_variables

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Settings]:
    """``llmsup serve`` runs up to the web server, which is not started: the settings it would serve with."""
    from llmsup.supervisor.cli import serving

    seen: list[Settings] = []
    monkeypatch.setattr(serving, "main", lambda settings, make_app: seen.append(settings))
    monkeypatch.setattr(logsetup, "configure", lambda level, kind: None)
    monkeypatch.chdir(tmp_path)
    for name in [n for n in __import__("os").environ if n.startswith("LLMSUP_")]:
        monkeypatch.delenv(name)
    return seen


def serve(served: list[Settings], *args: str) -> Settings:
    res = CliRunner().invoke(cli.app, ["serve", *args])
    assert res.exit_code == 0, res.output
    return served[-1]


def test_every_setting_has_a_flag_with_its_description_and_variable() -> None:
    options = {o.name: o for o in cli.SETTING_OPTIONS}
    assert set(options) == set(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        option = options[name]
        assert f"--{name.replace('_', '-')}" in option.flags[0].split("/") + list(option.flags)
        assert option.help == field.description and option.env_var == f"LLMSUP_{name.upper()}"


def test_vllm_flags_reach_the_settings_and_the_engines(served: list[Settings], tmp_path: Path) -> None:
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>")
    s = serve(served, "org/model", "--max-model-len", "4096", "--gpu-memory-utilization", "0.5", "--dtype", "bfloat16",
              "-tp", "2", "--max-num-seqs", "8", "--api-key", "k1-0123456789abcdef", "--served-model-name", "mine",
              "--enforce-eager", "--trust-remote-code", "--chat-template", str(template), "--seed", "7")
    assert (s.model, s.gpus_per_engine, s.slots_per_engine, s.served_model_name) == ("org/model", 2, 8, "mine")
    assert s.api_keys is not None and s.api_keys.get_secret_value() == "k1-0123456789abcdef"
    engines = s.for_engines()
    assert engines["options"] == {"max_model_len": 4096, "gpu_memory_utilization": 0.5, "dtype": "bfloat16",
                                  "enforce_eager": True, "trust_remote_code": True, "max_num_seqs": 8, "seed": 7}
    assert engines["chat_template"] == template.read_text()  # read here: engines on other hosts get the text


def test_old_flag_names_still_work(served: list[Settings]) -> None:
    s = serve(served, "--model", "m", "--gpus-per-engine", "1", "--slots-per-engine", "4", "--deadline", "9",
              "--interrupt-grace", "0.3", "--kill-grace", "2", "--engines", "3", "--log-level", "WARNING")
    assert (s.model, s.slots_per_engine, s.deadline_s, s.interrupt_grace_s, s.kill_grace_s, s.engines, s.log_level) == (
        "m", 4, 9.0, 0.3, 2.0, 3, "warning")


def test_two_different_models_are_refused(served: list[Settings]) -> None:
    res = CliRunner().invoke(cli.app, ["serve", "a", "--model", "b"])
    assert res.exit_code == 2 and "two models" in res.stderr
    assert serve(served, "a", "--model", "a").model == "a"


def test_engine_args_and_engine_options(served: list[Settings]) -> None:
    s = serve(served, "--engine-arg", "kv_cache_dtype=fp8", "--engine-arg", "--max-num-batched-tokens=2048",
              "--engine-arg", "enable_prefix_caching=true", "--engine-options", '{"multiprocessing": true}')
    assert s.engine_args == {"kv_cache_dtype": "fp8", "max_num_batched_tokens": 2048, "enable_prefix_caching": True}
    assert s.for_engines()["options"] == {"multiprocessing": True, "engine_args": s.engine_args}
    for bad in (["--engine-arg", "novalue"], ["--engine-options", "[1]"], ["--engine-options", "{nope"],
                ["--dtype", "int3"], ["--port", "x"]):
        res = CliRunner().invoke(cli.app, ["serve", *bad])
        assert res.exit_code == 2, (bad, res.output)


def test_invalid_values_exit_2_with_the_setting_named(served: list[Settings]) -> None:
    res = CliRunner().invoke(cli.app, ["serve", "--chat-template", "missing.jinja"])
    assert res.exit_code == 2 and "chat_template" in res.stderr
    res = CliRunner().invoke(cli.app, ["serve", "--gpu-memory-utilization", "1.5"])
    assert res.exit_code == 2 and "gpu_memory_utilization" in res.stderr


def test_cli_beats_environment_beats_file_and_aliases_work_everywhere(served: list[Settings], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "llmsup.toml"
    cfg.write_text("[llmsup]\ntensor_parallel_size = 4\nmax_num_seqs = 16\nport = 9001\n")
    monkeypatch.setenv("LLMSUP_MAX_NUM_SEQS", "12")
    s = serve(served, "--config", str(cfg), "--port", "9002")
    assert (s.gpus_per_engine, s.slots_per_engine, s.port) == (4, 12, 9002)
    monkeypatch.setenv("LLMSUP_SLOTS_PER_ENGINE", "10")  # the setting's own name wins over its alias
    assert load_settings(cfg).slots_per_engine == 10


def test_help_groups_options_in_panels() -> None:
    res = CliRunner().invoke(cli.app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for panel in ("Server", "Engines", "Model", "Jobs and deadlines", "Security"):
        assert f"─ {panel} " in res.output
    for flag in ("--tensor-parallel-size", "--max-num-seqs", "--gpu-memory-utilization", "--api-key",
                 "--engine-arg", "--log-format", "--signal-path", "--hf-home"):
        assert flag in res.output
    assert "[llmsup:stall]" in res.output  # help text shown as written, not taken for markup


def test_version() -> None:
    res = CliRunner().invoke(cli.app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"llmsup {cli.version()}"


def test_unknown_environment_variables_are_named_with_the_close_match() -> None:
    warnings = unknown_variables({"LLMSUP_ENGINESS": "3", "LLMSUP_PORT": "1", "LLMSUP_URL": "u",
                                  "LLMSUP_TENSOR_PARALLEL_SIZE": "2", "PATH": "/bin", "LLMSUP_ZZZQQQ": "1"})
    assert warnings == [
        "environment variable LLMSUP_ENGINESS is not an llmsup setting (did you mean LLMSUP_ENGINES?): ignored",
        "environment variable LLMSUP_ZZZQQQ is not an llmsup setting: ignored",
    ]


def test_serve_warns_about_unknown_variables(served: list[Settings], monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("LLMSUP_DEADLINE", "5")
    serve(served)
    assert "LLMSUP_DEADLINE is not an llmsup setting (did you mean LLMSUP_DEADLINE_S?)" in caplog.text


def test_a_new_setting_gets_its_option_without_cli_code() -> None:
    """Settings added later (any field) appear as options: a plain field in the catch-all panel, a list as
    comma-separated values, a field with metadata in its panel under its extra names."""

    class More(BaseSettings):
        retain_jobs: int = Field(0, ge=0, description="keep at most this many finished jobs")
        allowed_hosts: list[str] = Field(default_factory=list, description="Host header names")
        metrics_open: bool = Field(False, description="/metrics without a key",
                                   json_schema_extra={"cli": {"panel": SECURITY, "flags": ["--open-metrics"]}})
        keys_required: bool = Field(True, description="keys on job routes", json_schema_extra={
            "cli": {"panel": SECURITY, "flags": ["--keys-required/--keys-optional"]}})

    options = {o.name: o for o in cli_options.setting_options(More)}
    assert options["retain_jobs"].panel == cli_options.OTHER_PANEL and options["retain_jobs"].default == "0"
    assert options["allowed_hosts"].kind == "list" and options["metrics_open"].panel == SECURITY
    given: dict[str, Any] = {}

    def command(**values: Any) -> None:
        given.update(cli_options.given_settings(list(options.values()), values))

    app = typer.Typer()
    app.command()(cli_options.command(command, list(options.values()), []))
    res = CliRunner().invoke(app, ["--retain-jobs", "5", "--allowed-hosts", "a.example,b.example",
                                   "--allowed-hosts", "c.example", "--open-metrics", "--keys-optional"])
    assert res.exit_code == 0, res.output
    assert given == {"retain_jobs": 5, "allowed_hosts": ["a.example", "b.example", "c.example"], "metrics_open": True,
                     "keys_required": False}
    assert options["keys_required"].flags == ("--keys-required/--keys-optional",)
    assert More(**given).allowed_hosts == ["a.example", "b.example", "c.example"]


def test_model_options_reach_vllm_and_transformers_arguments() -> None:
    from llmsup.engines.vllm_settings import llm_kwargs

    options = Settings(trust_remote_code=True, slots_per_engine=8, gpu_memory_utilization=0.45, max_model_len=4096,
                       engine_args={"kv_cache_dtype": "fp8", "max_num_seqs": 16}).model_options()
    gpu = llm_kwargs("/m", options, on_gpu=True, gpu="0")
    assert (gpu["trust_remote_code"], gpu["gpu_memory_utilization"], gpu["max_model_len"]) == (True, 0.45, 4096)
    assert gpu["kv_cache_dtype"] == "fp8" and gpu["max_num_seqs"] == 16  # --engine-arg wins over the named setting
    cpu = llm_kwargs("/m", Settings(dtype="bfloat16", enforce_eager=False).model_options(), on_gpu=False, gpu="")
    assert (cpu["dtype"], cpu["enforce_eager"], cpu["max_model_len"]) == ("bfloat16", False, 2048)


def test_options_not_given_are_not_passed(served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSUP_ENGINE_OPTIONS", json.dumps({"dtype": "float16"}))
    monkeypatch.setenv("LLMSUP_CANCEL_ON_DISCONNECT", "false")
    s = serve(served, "--no-enforce-eager")
    assert s.engine_options == {"dtype": "float16"} and s.cancel_on_disconnect is False
    assert s.for_engines()["options"] == {"dtype": "float16", "enforce_eager": False}
