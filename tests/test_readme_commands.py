"""Every `llmsup ...` command line the README and docs/ show parses: its subcommand, flags and values exist (they
can never document a flag that does not exist). Lines are parsed by the command's own parser, nothing is run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from llmsup.supervisor.cli import commands as cli

pytestmark = pytest.mark.timeout(30)
ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`(llmsup (?:--?[a-z]|serve|submit|status|kill|engines)[^`]*)`")


def readme_commands(text: str) -> list[str]:
    """``llmsup`` lines of the README's shell blocks (a ``$ `` prompt allowed), and inline `llmsup ...` code."""
    found = []
    for block in SHELL_BLOCK.findall(text):
        for line in block.splitlines():
            for command in line.removeprefix("$ ").split("&&"):
                if command.strip().startswith("llmsup "):
                    found.append(command.strip())
    return found + INLINE.findall(text)


def parse(command: str) -> None:
    """``command`` through click's parser (raises click's UsageError on an unknown command, flag or value;
    ``--help`` and ``--version`` end parsing with a zero exit, as they end the command)."""
    args = shlex.split(command, comments=True)[1:]
    group = typer.main.get_command(cli.app)
    try:
        with group.make_context("llmsup", list(args), resilient_parsing=False) as ctx:
            protected = getattr(ctx, "_protected_args", None)  # the subcommand's name (click's internal list)
            rest = [*(ctx.protected_args if protected is None else protected), *ctx.args]
            if not rest:
                return
            name, sub, sub_args = group.resolve_command(ctx, rest)
            assert sub is not None, command
            sub.make_context(name, sub_args, parent=ctx)
    except typer.Exit as done:  # --help, --version
        assert done.exit_code == 0, command


def test_the_readme_shows_commands() -> None:
    commands = readme_commands(README.read_text())
    subcommands = {shlex.split(c, comments=True)[1] for c in commands}
    assert {"serve", "submit", "status", "kill", "engines"} <= subcommands


@pytest.mark.parametrize("command", [pytest.param(c, id=f"{p.name}: {c}") for p in PAGES for c in readme_commands(p.read_text())])
def test_readme_command_parses(command: str) -> None:
    parse(command)


@pytest.mark.parametrize("command", ["llmsup serve --no-such-flag", "llmsup serve --dtype int3",
                                     "llmsup status --json --bogus", "llmsup launch"])
def test_a_command_that_does_not_exist_fails_to_parse(command: str) -> None:
    with pytest.raises(Exception) as raised:
        parse(command)
    assert type(raised.value).__name__ in ("NoSuchOption", "BadParameter", "UsageError"), raised.value
