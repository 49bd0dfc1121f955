"""Settings: CLI flags > environment (``LLMSUP_<NAME>``) > config file > defaults.

Each field is one setting, reachable three ways, all derived from the field: the flag ``--<name-with-dashes>``
(``supervisor/cli/options.py`` generates the options of ``llmsup serve`` from the fields), the environment variable
``LLMSUP_<NAME>`` and the TOML key ``<name>``. A field's ``json_schema_extra`` (built by :func:`cli`) names its help
panel, extra flag names (vLLM's, or older ones) and other names its variable and key also accept.

The fields live in one module per concern (:class:`Settings` is made of them): the engines and their model
(``settings_engines.py``), jobs and deadlines (``settings_jobs.py``), the web server and its security
(``settings_web.py``), vLLM's API server flags (``settings_frontend.py``), what the OpenAI routes serve
(``settings_serving.py``), pools (``pools.py``); the settings file and alias variables: ``settings_sources.py``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from llmsup.supervisor.pools import PoolFields
from llmsup.supervisor.settings_engines import BackendName as BackendName
from llmsup.supervisor.settings_engines import DType as DType
from llmsup.supervisor.settings_engines import EngineFields
from llmsup.supervisor.settings_frontend import FrontendFields
from llmsup.supervisor.settings_jobs import JobFields
from llmsup.supervisor.settings_meta import ENGINES as ENGINES
from llmsup.supervisor.settings_meta import FRONTEND as FRONTEND
from llmsup.supervisor.settings_meta import JOBS as JOBS
from llmsup.supervisor.settings_meta import MODEL as MODEL
from llmsup.supervisor.settings_meta import SECURITY as SECURITY
from llmsup.supervisor.settings_meta import SERVER as SERVER
from llmsup.supervisor.settings_meta import cli as cli
from llmsup.supervisor.settings_meta import cli_meta as cli_meta
from llmsup.supervisor.settings_meta import split_list as split_list
from llmsup.supervisor.settings_secrets import SecretSettings
from llmsup.supervisor.settings_serving import ServingFeatures
from llmsup.supervisor.settings_sources import ENV_PREFIX as ENV_PREFIX
from llmsup.supervisor.settings_sources import AliasEnvironment, aliases_of
from llmsup.supervisor.settings_sources import config_path as config_path
from llmsup.supervisor.settings_sources import read_config as read_config
from llmsup.supervisor.settings_web import LogLevel as LogLevel
from llmsup.supervisor.settings_web import WebFields

# LLMSUP_* variables read elsewhere than by Settings (not misspelt settings)
OTHER_VARIABLES = {
    "LLMSUP_CONFIG": "the TOML settings file",
    "LLMSUP_URL": "the server the client and CLI talk to",
    "LLMSUP_API_KEY": "the API key the client sends",
    "LLMSUP_ENGINE_SET": "set by the supervisor in engine processes",
    "LLMSUP_KEEP_TORCH_EXTENSIONS": "read by engines (torch extension check)",
}


class Settings(FrontendFields, WebFields, JobFields, EngineFields, ServingFeatures, PoolFields, SecretSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, AliasEnvironment(settings_cls)

    def model_options(self) -> dict[str, Any]:
        """What the backends get as ``options``: ``engine_options``, with the named model settings that are set
        (they win over the same key there) and ``engine_args`` merged into its ``engine_args``."""
        options = dict(self.engine_options)
        named = {"max_model_len": self.max_model_len, "dtype": self.dtype, "enforce_eager": self.enforce_eager,
                 "gpu_memory_utilization": self.gpu_memory_utilization, "seed": self.seed,
                 "max_num_seqs": self.slots_per_engine, "trust_remote_code": self.trust_remote_code or None}
        options.update({key: value for key, value in named.items() if value is not None})
        lora = {"enable_lora": True, "max_loras": self.max_loras, "max_lora_rank": self.max_lora_rank}
        if self.engine_args or self.lora_modules:
            options["engine_args"] = {**(lora if self.lora_modules else {}), **(options.get("engine_args") or {}),
                                      **self.engine_args}
        return options

    def for_engines(self) -> dict[str, Any]:
        return {
            "backend": self.resolved_backend(),
            "model": self.model,
            "run_dir": str(self.run_dir.resolve()),
            "threads": self.engine_threads,
            "sim_token_s": self.sim_token_s,
            "nice": self.engine_nice,
            "options": self.model_options(),
            "engines_on_host": self.engines if self.cluster_file is None else 1,
            "hf_home": str(self.hf_home.expanduser().resolve()) if self.hf_home else None,
            "chat_template": self.chat_template_text(),
            "log_dir": str(self.log_dir.resolve()),
            "log_level": self.log_level,
            "log_format": self.log_format,
        }


def setting_aliases() -> dict[str, str]:
    """Other names a setting answers to (alias -> field name), e.g. ``tensor_parallel_size`` -> ``gpus_per_engine``."""
    return aliases_of(Settings)


def known_variables() -> set[str]:
    """Every ``LLMSUP_*`` environment variable llmsup reads."""
    names = set(Settings.model_fields) | set(setting_aliases())
    return {ENV_PREFIX + name.upper() for name in names} | set(OTHER_VARIABLES)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning per ``LLMSUP_*`` variable that no setting reads (a misspelling is otherwise silently ignored),
    naming the closest known variable."""
    known = known_variables()
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}  # the shared prefix would make all alike
    warnings = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in known:
            continue
        close = difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), sorted(suffixes), n=1, cutoff=0.6)
        hint = f" (did you mean {suffixes[close[0]]}?)" if close else ""
        warnings.append(f"environment variable {name} is not an llmsup setting{hint}: ignored")
    return warnings


def load_settings(config_file: Path | None = None, file_values: dict[str, Any] | None = None,
                  **given: Any) -> Settings:
    """Settings from CLI values (``given``, None = not given) > ``LLMSUP_*`` environment > config file > defaults.

    The file is ``config_file``, else ``$LLMSUP_CONFIG`` (:func:`read_config`: TOML or YAML); its keys are the setting
    names (or their aliases, e.g. ``tensor_parallel_size``). ``file_values``: the file's values read already.
    """
    from pydantic_settings import InitSettingsSource

    path = config_path(config_file)
    if file_values is None:
        file_values = read_config(path) if path is not None else {}
    aliases = setting_aliases()
    from_file = {aliases.get(key, key): value for key, value in file_values.items()}
    unknown = set(from_file) - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"{path}: unknown settings {sorted(unknown)}")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(title="llmsup settings")

        @classmethod
        def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, AliasEnvironment(settings_cls),
                    InitSettingsSource(settings_cls, init_kwargs=from_file))

    values = _FromFile(**{k: v for k, v in given.items() if v is not None})
    return Settings.model_construct(**values.model_dump())
