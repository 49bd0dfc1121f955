"""``docs/configuration.md``, rendered from the settings definition so that it cannot drift from it.

Every field of :class:`~llmsup.supervisor.settings.Settings` becomes one row: its TOML key, its flags (as
``llmsup serve`` declares them: the options are generated from the same fields), its ``LLMSUP_*`` variable, its
default and its description, grouped by the help panels of ``llmsup serve --help``. ``make docs`` rewrites the
file (``python -m llmsup.supervisor.cli.config_doc --write docs/configuration.md``); a test fails when the file differs
from :func:`render`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from llmsup.supervisor.cli.options import OTHER_PANEL, SettingOption, setting_options
from llmsup.supervisor.settings import ENGINES, ENV_PREFIX, JOBS, MODEL, OTHER_VARIABLES, SECURITY, SERVER, Settings, cli_meta

PANELS = (SERVER, ENGINES, MODEL, JOBS, SECURITY, OTHER_PANEL)
COMMAND = "python -m llmsup.supervisor.cli.config_doc --write docs/configuration.md"

HEAD = f"""# Configuration

<!-- Generated from supervisor/settings.py by `make docs` ({COMMAND}): edit the settings, not this file.
     tests/test_docs_config.py fails when this file differs from what the generator writes. -->

Every setting of `llmsup serve` is reachable three ways: a flag, an environment variable `LLMSUP_<NAME>` and a key
of the TOML file given with `--config FILE` (or `LLMSUP_CONFIG`; keys at the top level or under `[llmsup]`).
Flags win over the environment, which wins over the file; a setting given nowhere takes its default. Other names
a setting answers to (vLLM's, older ones) stand beside its own: flags in the flag column, keys and variables in
theirs. `llmsup serve --help` prints the same list, grouped the same way. `llmsup serve MODEL` is the same as
`--model MODEL`.

Values: on/off settings are `--x` / `--no-x` on the command line and `true` / `false` in the file; a list is
comma-separated (the flag repeatable); a JSON object is given as JSON text on the command line and the
environment, as a table in the file. A default of "-" means unset: the meaning says what that does.
"""


def render() -> str:
    """The whole of ``docs/configuration.md``."""
    options = setting_options()
    parts = [HEAD]
    for panel in PANELS:
        rows = [_row(option) for option in options if option.panel == panel]
        if not rows:
            continue
        parts.append(f"\n## {panel}\n\n| setting (TOML key) | flag | environment | value | default | meaning |\n"
                     "|---|---|---|---|---|---|\n" + "".join(rows))
    others = "".join(f"| `{name}` | {_cell(why)} |\n" for name, why in sorted(OTHER_VARIABLES.items()))
    parts.append("\n## Other environment variables\n\nRead by llmsup besides the settings (any other `LLMSUP_*` "
                 "variable is named at start as no setting, with the closest one).\n\n"
                 f"| variable | read for |\n|---|---|\n{others}")
    return "".join(parts)


def _row(option: SettingOption) -> str:
    aliases = list(cli_meta(Settings.model_fields[option.name]).get("aliases", ()))
    keys = " ".join(f"`{name}`" for name in [option.name, *aliases])
    variables = " ".join(f"`{ENV_PREFIX}{name.upper()}`" for name in [option.name, *aliases])
    flags = ", ".join(f"`{name}`" for flag in option.flags for name in flag.split("/"))
    default = f"`{option.default}`" if option.default is not None else "-"
    return f"| {keys} | {flags} | {variables} | {_value(option)} | {default} | {_cell(option.help)} |\n"


def _value(option: SettingOption) -> str:
    if option.kind == "flag":
        return "on/off"
    if option.kind == "pairs":
        return "`KEY=VALUE` (repeatable); a table in the file"
    if option.kind == "json":
        return "JSON object"
    if option.kind == "list":
        return "list"
    if option.choices:
        return " \\| ".join(f"`{choice}`" for choice in option.choices)
    return {int: "integer", float: "number", Path: "path"}.get(option.value_type, "text")


def _cell(text: str) -> str:
    """Text that stays one table cell and reads as written (no HTML tag, no emphasis)."""
    return (text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
            .replace("\n", " "))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render docs/configuration.md from the settings.")
    parser.add_argument("--write", type=Path, metavar="PATH", help="write the page there (default: print it)")
    args = parser.parse_args(argv)
    if args.write is None:
        print(render(), end="")
    else:
        args.write.write_text(render())


if __name__ == "__main__":
    main()
