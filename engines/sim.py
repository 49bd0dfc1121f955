"""The ``sim`` backend: simulated tokens with scripted behaviours.

Tokens are the words of the prompt, cycled, at ``token_s`` seconds each.
Directives in the prompt text choose a behaviour:

``[sim:slow=S]``        S seconds per token instead of the default
``[sim:hang]``          a few tokens, then a pure-Python infinite loop
``[sim:hang-nosigint]`` a few tokens, then SIGINT blocked and a sleep in C forever
``[sim:crash]``         a few tokens, then the engine process exits
``[sim:error]``         raises an exception (the job fails)
``[sim:alloc=MB]``      keeps MB of memory allocated in the engine (to test recycling)
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

from engines.protocol import GenParams, Generation, StopMatcher, TokenCallback

DIRECTIVE = re.compile(r"\[sim:([a-z-]+)(?:=([0-9.]+))?\]")
PREFIX_TOKENS = 4  # tokens emitted before a scripted hang or crash
_LEAKED: list[bytearray] = []  # memory kept by [sim:alloc=MB]


def parse_directives(prompt: str) -> tuple[str, dict[str, float | None]]:
    """Split a prompt into its plain text and its ``[sim:...]`` directives."""
    directives: dict[str, float | None] = {}
    for name, value in DIRECTIVE.findall(prompt):
        directives[name] = float(value) if value else None
    return DIRECTIVE.sub("", prompt).strip(), directives


class SimBackend:
    name = "sim"

    def __init__(self, token_s: float = 0.005) -> None:
        self.token_s = token_s

    def load(self) -> None:
        return None

    def generate(self, prompt: str, params: GenParams, on_token: TokenCallback) -> Generation:
        text, directives = parse_directives(prompt)
        words = text.split() or ["tok"]
        token_s = directives.get("slow") or self.token_s
        if "error" in directives:
            raise RuntimeError("sim: scripted error")
        if directives.get("alloc"):
            _LEAKED.append(bytearray(int(directives["alloc"] * 1024 * 1024)))
        scripted_end = next((d for d in ("hang", "hang-nosigint", "crash") if d in directives), None)
        limit = min(params.max_tokens, PREFIX_TOKENS) if scripted_end else params.max_tokens
        stops = StopMatcher(params.stop)
        out = ""
        count = 0
        for i in range(limit):
            time.sleep(token_s)
            piece = words[i % len(words)] + " "
            cut = stops.cut(out + piece)
            if cut is not None:
                if len(cut) > len(out):
                    on_token(cut[len(out):])
                return Generation(cut, count + 1, "stop", len(words))
            out += piece
            count += 1
            on_token(piece)
        if scripted_end == "hang":
            _spin_forever()
        elif scripted_end == "hang-nosigint":
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            time.sleep(10**7)
        elif scripted_end == "crash":
            os._exit(17)
        return Generation(out, count, "length", len(words))

    def abort(self) -> None:
        return None

    def release(self) -> None:
        _LEAKED.clear()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": "sim", "token_s": self.token_s}


def _spin_forever() -> None:
    n = 0
    while True:  # a pure-Python runaway: SIGINT reaches it between bytecodes
        n += 1
