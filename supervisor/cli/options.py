"""The options of ``llmsup serve``, generated from the fields of :class:`~llmsup.supervisor.settings.Settings`.

One option per setting: ``--<name-with-dashes>`` plus the extra names the field declares (vLLM's, older ones),
shown in the field's help panel with its description, its default and its environment variable. An option left
out is not passed on, so the environment, the config file and the defaults still apply (``load_settings``).

Value forms: booleans are ``--x/--no-x``; a choice (``Literal``) takes one of its values; a dict setting takes a
JSON object, or ``KEY=VALUE`` (repeatable) when the field says ``pairs``; a list setting takes comma-separated
values (repeatable).
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from llmsup.supervisor.settings import ENV_PREFIX, Settings, cli_meta, split_list

OTHER_PANEL = "More settings"
Kind = Literal["value", "flag", "json", "pairs", "list"]


@dataclass(frozen=True)
class SettingOption:
    """How one setting appears on the command line."""

    name: str  # the Settings field
    flags: tuple[str, ...]  # as click declares them: a boolean's "--x/--no-x" is one entry
    kind: Kind
    value_type: type
    panel: str
    help: str
    default: str | None  # shown in the help; None: not shown (the description says what unset means)
    choices: tuple[str, ...] = ()

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()


def setting_options(model: type[BaseModel] = Settings) -> list[SettingOption]:
    """One option per field of ``model``, in the fields' order."""
    return [_option(name, field) for name, field in model.model_fields.items()]


def _option(name: str, field: FieldInfo) -> SettingOption:
    meta = cli_meta(field)
    base = _strip_optional(field.annotation)
    own = f"--{name.replace('_', '-')}"
    extra = tuple(f for f in meta.get("flags", ()) if f != own)
    choices: tuple[str, ...] = ()
    value_type: type = str
    if base is bool:
        kind: Kind = "flag"
        value_type = bool
    elif typing.get_origin(base) is Literal:
        kind, choices = "value", tuple(str(c) for c in typing.get_args(base))
    elif typing.get_origin(base) is dict or base is dict:
        kind = "pairs" if meta.get("pairs") else "json"
    elif typing.get_origin(base) in (list, tuple, set) or base in (list, tuple, set):
        kind = "list"
    else:
        kind = "value"
        value_type = base if base in (int, float, Path) else str  # str, SecretStr and anything else: text
    if kind == "flag":  # --x/--no-x, unless the field names its own pair (e.g. "--metrics-open/--metrics-need-key")
        paired = any(f.split("/")[0].strip() == own for f in extra)
        flags = extra if paired else (f"{own}/--no-{own.removeprefix('--')}", *extra)
    else:
        flags = (*extra, own)  # the names users know first (vLLM's, older ones)
    return SettingOption(name, flags, kind, value_type, str(meta.get("panel") or OTHER_PANEL),
                         field.description or name.replace("_", " "), _shown_default(field), choices)


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _strip_optional(args[0])
    if typing.get_origin(annotation) is Annotated:
        return _strip_optional(typing.get_args(annotation)[0])
    return annotation


def _shown_default(field: FieldInfo) -> str | None:
    value = field.default
    if value is PydanticUndefined or value is None or isinstance(value, SecretStr):
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (dict, list)) and not value:
        return None
    return str(value)


# typer parameters ------------------------------------------------------------------------------------------------
def parameters(options: list[SettingOption]) -> list[inspect.Parameter]:
    """Keyword parameters (default None: not given) that typer turns into these options."""
    return [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=Annotated[_python_type(o), _typer_option(o)]) for o in options]


def _python_type(option: SettingOption) -> Any:
    if option.kind in ("pairs", "list"):
        return list[str] | None
    if option.choices:
        return Literal[option.choices] | None
    return option.value_type | None


def _typer_option(option: SettingOption) -> Any:
    flags = list(option.flags)
    help_text = _escape(option.help + f" [env {option.env_var}]")
    if option.kind == "pairs":
        help_text += " (KEY=VALUE, repeatable)"
    elif option.kind == "json":
        help_text += " (JSON object)"
    elif option.kind == "list":
        help_text += " (comma-separated, repeatable)"
    return typer.Option(
        *flags, help=help_text, rich_help_panel=option.panel, show_default=option.default or False,
        case_sensitive=False,
        metavar=_metavar(option),
    )


def _metavar(option: SettingOption) -> str | None:
    if option.kind == "pairs":
        return "KEY=VALUE"
    if option.kind == "json":
        return "JSON"
    return None


def _escape(text: str) -> str:
    """Help text shown literally by rich (square brackets would be read as markup)."""
    return text.replace("[", r"\[")


def command(function: Callable[..., None], options: list[SettingOption], leading: list[inspect.Parameter]) -> Callable[..., None]:
    """``function`` with a signature that typer reads as: ``leading`` parameters, then one option per setting."""

    def settings_command(**values: Any) -> None:
        function(**values)

    settings_command.__name__ = function.__name__
    settings_command.__doc__ = function.__doc__
    settings_command.__signature__ = inspect.Signature([*leading, *parameters(options)])  # type: ignore[attr-defined]
    return settings_command


# values ----------------------------------------------------------------------------------------------------------
def given_settings(options: list[SettingOption], values: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line (parsed), for ``load_settings``; raises ``typer.BadParameter``."""
    given: dict[str, Any] = {}
    for option in options:
        value = values.get(option.name)
        if value is None or (option.kind in ("pairs", "list") and not value):
            continue
        if option.kind == "json":
            given[option.name] = _json_object(value, option)
        elif option.kind == "pairs":
            given[option.name] = dict(_pair(item, option) for item in value)
        elif option.kind == "list":
            given[option.name] = [part for item in value for part in split_list(item)]
        else:
            given[option.name] = value
    return given


def _json_object(text: str, option: SettingOption) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint=option.flags[0]) from None
    if not isinstance(value, dict):
        raise typer.BadParameter("expected a JSON object {...}", param_hint=option.flags[0])
    return value


def _pair(item: str, option: SettingOption) -> tuple[str, Any]:
    """``KEY=VALUE``: the key with dashes as underscores (vLLM's flag names work), the value as JSON when it
    parses (numbers, true/false, lists...), else the text itself."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option.flags[-1])
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    return key.strip().removeprefix("--").replace("-", "_"), value


def flag_names(options: list[SettingOption]) -> dict[str, bool]:
    """Every name of these options (a boolean's ``--x/--no-x`` both), each with whether it takes a value."""
    names: dict[str, bool] = {}
    for option in options:
        for declared in option.flags:
            for name in declared.split("/"):
                if name.strip():
                    names[name.strip()] = option.kind != "flag"
    return names
