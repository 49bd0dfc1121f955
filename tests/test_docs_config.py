"""docs/configuration.md is what the generator renders from the settings (``make docs`` rewrites it), and every
flag it shows is one that ``llmsup serve`` takes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from llmsup.supervisor import cli
from llmsup.supervisor.cli.config_doc import COMMAND, render
from llmsup.supervisor.settings import Settings

pytestmark = pytest.mark.timeout(30)
PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_the_page_is_what_the_generator_renders() -> None:
    assert PAGE.read_text() == render(), f"docs/configuration.md is out of date: run `make docs` ({COMMAND})"


def test_every_setting_has_a_row() -> None:
    keys = {m.group(1) for m in re.finditer(r"^\| `([a-z_0-9]+)`", render(), re.M)}
    assert set(Settings.model_fields) <= keys


def test_the_flags_shown_are_the_flags_of_serve() -> None:
    serve = typer.main.get_command(cli.app).commands["serve"]  # type: ignore[attr-defined]
    options = [param for param in serve.params if param.param_type_name == "option"]
    declared = {flag for option in options for flag in (*option.opts, *option.secondary_opts)}
    rows = [line for line in render().splitlines() if line.startswith("| `") and "`--" in line]
    shown = {flag for line in rows for flag in re.findall(r"`(-[-a-z0-9]+)`", line.split(" | ")[1])}
    assert len(rows) == len(Settings.model_fields)
    assert shown and shown <= declared, shown - declared
    assert declared - shown == {"--config"}  # the file itself, not a setting
