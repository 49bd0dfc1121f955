"""Where settings come from besides flags and ``LLMSUP_<NAME>``: the variables of settings' other names, and the
settings file (TOML, or YAML as ``vllm serve --config`` reads it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from llmsup.supervisor.settings_meta import cli_meta

ENV_PREFIX = "LLMSUP_"


def aliases_of(settings_cls: type[BaseSettings]) -> dict[str, str]:
    """Other names a setting answers to (alias -> field name), e.g. ``tensor_parallel_size`` -> ``gpus_per_engine``."""
    return {alias: name for name, field in settings_cls.model_fields.items()
            for alias in cli_meta(field).get("aliases", ())}


class AliasEnvironment(PydanticBaseSettingsSource):
    """``LLMSUP_<ALIAS>`` variables of the settings that declare aliases (``LLMSUP_<NAME>`` wins over them)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for alias, name in aliases_of(self.settings_cls).items():
            raw = os.environ.get(ENV_PREFIX + alias.upper())
            if raw is not None:
                values.setdefault(name, raw)
        return values


def config_path(config_file: Path | None = None) -> Path | None:
    """The settings file: ``config_file``, else ``$LLMSUP_CONFIG``, else none."""
    return config_file or (Path(os.environ["LLMSUP_CONFIG"]) if os.environ.get("LLMSUP_CONFIG") else None)


def read_config(path: Path) -> dict[str, Any]:
    """A settings file's values, keys with underscores: TOML (top level or ``[llmsup]``), or YAML as ``vllm serve
    --config`` reads it (``.yaml`` / ``.yml``, or a file that is not TOML); keys may be written with dashes."""
    import tomllib

    import yaml

    text = path.read_text()
    data: Any
    if path.suffix.lower() in (".yaml", ".yml"):
        data = yaml.safe_load(text)
    else:
        try:
            data = tomllib.loads(text)
            data = data.get("llmsup", data)
        except tomllib.TOMLDecodeError as toml_error:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ValueError(f"{path}: neither TOML ({toml_error}) nor YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of settings (KEY = VALUE, or KEY: VALUE)")
    return {str(key).replace("-", "_"): value for key, value in data.items()}

