"""The ``python`` backend: functions the operator registered at start (``--function NAME=module:callable``), one
call per job, for the IO and CPU steps of pipelines (fetch a document, split it, write a report).

The engine imports every registered callable when it loads (a missing one stops the engine at start, saying
which). A job's prompt is ``{"fn": NAME, "input": TEXT}``; the function gets the input read as JSON when it parses
(else the text itself) and its return value is the job's output: a string as is, anything else as JSON. Nothing a
request sends is run as code: it can only name a registered function. The call runs in the engine's main thread, so
the job's deadline and cancel interrupt it as they interrupt a model (SIGINT raises ``KeyboardInterrupt`` in it).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

from llmsup.engines.protocol import Generation, GenParams, RequestRejected, TokenCallback

UNSUPPORTED = {"token_prompts": "a function step takes text", "token_ids": "a function step has no tokens"}


def import_callable(target: str) -> Callable[[Any], Any]:
    """``module:attr.path`` -> the callable (ImportError / AttributeError / TypeError saying which)."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return obj  # type: ignore[no-any-return]


def call_payload(fn: str, text: str) -> str:
    """The prompt of a job that calls ``fn`` with ``text``."""
    return json.dumps({"fn": fn, "input": text})


def output_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class PythonBackend:
    name = "python"

    def __init__(self, functions: dict[str, str]) -> None:
        self.targets = dict(functions)
        self.functions: dict[str, Callable[[Any], Any]] = {}

    def load(self) -> None:
        for name, target in self.targets.items():
            try:
                self.functions[name] = import_callable(target)
            except (ImportError, AttributeError, TypeError) as exc:
                raise RuntimeError(f"function {name}={target}: {type(exc).__name__}: {exc}") from exc

    def generate(self, prompt: str, params: GenParams, on_token: TokenCallback) -> Generation:
        try:
            call = json.loads(prompt)
            name, text = call["fn"], call["input"]
        except (ValueError, KeyError, TypeError):
            raise RequestRejected('a python engine runs {"fn": NAME, "input": TEXT} (a function step)') from None
        fn = self.functions.get(name)
        if fn is None:
            raise RequestRejected(f"no function {name!r} here; registered: {', '.join(sorted(self.functions))}")
        try:
            arg: Any = json.loads(text)
        except ValueError:
            arg = text
        out = output_text(fn(arg))
        on_token(out)
        return Generation(out, 1, "stop")

    def abort(self) -> None:
        """Nothing in flight outlives the call (the interrupt ended it)."""

    def release(self) -> None:
        self.functions.clear()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": None, "functions": dict(self.targets), "unsupported": UNSUPPORTED}
