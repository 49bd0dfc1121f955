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
from dataclasses import dataclass
from typing import Any

from llmsup.engines.protocol import (
    FinishReason,
    Generation,
    GenParams,
    RequestRejected,
    StepOutput,
    StopMatcher,
    TokenCallback,
    TokenLogprob,
    TopLogprob,
)

DIRECTIVE = re.compile(r"\[sim:([a-z-]+)(?:=([0-9.]+))?\]")
PREFIX_TOKENS = 4  # tokens emitted before a scripted hang or crash
_LEAKED: list[bytearray] = []  # memory kept by [sim:alloc=MB]
MAX_MODEL_LEN = 4096  # the simulated context, in words
WHY = "the sim backend repeats the prompt's words: it has no vocabulary and no distribution to change"
UNSUPPORTED = {
    "penalties": WHY, "min_p": WHY, "logit_bias": WHY, "stop_token_ids": WHY, "allowed_token_ids": WHY,
    "structured_outputs": WHY,
    "token_prompts": WHY, "token_ids": WHY,
}


def sim_logprob(piece: str, k: int | None) -> TokenLogprob:
    """A simulated token is certain: logprob 0, rank 1, and itself as its only alternative."""
    return TokenLogprob(0, piece, 0.0, 1, (TopLogprob(0, piece, 0.0),) if k else ())


def prompt_words(prompt: str) -> list[str]:
    """The words the sim backend counts as the prompt's tokens."""
    return parse_directives(prompt)[0].split() or ["tok"]


def check_params(params: GenParams) -> None:
    """Refuse what the sim backend cannot honour (RequestRejected)."""
    used = [name for name, on in (
        ("penalties", params.penalised), ("min_p", params.min_p > 0), ("logit_bias", bool(params.logit_bias)),
        ("stop_token_ids", bool(params.stop_token_ids)), ("allowed_token_ids", bool(params.allowed_token_ids)),
        ("structured_outputs", params.structured is not None),
        ("token_prompts", bool(params.prompt_token_ids)), ("token_ids", params.return_token_ids)) if on]
    if used:
        raise RequestRejected(f"{', '.join(used)}: {WHY}")


def generation_of(text: str, count: int, reason: FinishReason, words: list[str], params: GenParams,
                  logprobs: list[TokenLogprob]) -> Generation:
    """A finished simulated generation: its text, tokens, why it ended, and the logprobs asked for."""
    prompt_lps = tuple(sim_logprob(w + " ", params.prompt_logprobs) for w in words[1:]) if (
        params.prompt_logprobs is not None) else ()
    return Generation(text, count, reason, len(words), logprobs=tuple(logprobs), prompt_logprobs=prompt_lps)


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
        self._batch: dict[str, _SimRequest] = {}

    def load(self) -> None:
        return None

    def generate(self, prompt: str, params: GenParams, on_token: TokenCallback) -> Generation:
        check_params(params)
        text, directives = parse_directives(prompt)
        words = text.split() or ["tok"]
        token_s = directives.get("slow") or self.token_s
        if "error" in directives:
            raise RuntimeError("sim: scripted error")
        if len(words) >= MAX_MODEL_LEN:
            raise RequestRejected(f"the prompt has {len(words)} words, the sim context is {MAX_MODEL_LEN}")
        logprobs: list[TokenLogprob] = []
        alloc_mb = directives.get("alloc")
        if alloc_mb:
            _LEAKED.append(bytearray(int(alloc_mb * 1024 * 1024)))
        scripted_end = next((d for d in ("hang", "hang-nosigint", "crash") if d in directives), None)
        limit = min(params.max_tokens, PREFIX_TOKENS) if scripted_end else params.max_tokens
        stops = StopMatcher(params.stop)
        out = ""
        count = 0
        for i in range(limit):
            time.sleep(token_s)
            piece = words[i % len(words)] + " "
            cut = stops.cut(out + piece)
            entry = sim_logprob(piece, params.logprobs) if params.logprobs is not None else None
            if entry is not None:
                logprobs.append(entry)
            if cut is not None:  # the token that completes a stop string: what precedes the stop, if anything
                on_token(cut[len(out):], None, entry)
                return generation_of(cut, count + 1, "stop", words, params, logprobs)
            out += piece
            count += 1
            on_token(piece, None, entry)
        if scripted_end == "hang":
            _spin_forever()
        elif scripted_end == "hang-nosigint":
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            time.sleep(10**7)
        elif scripted_end == "crash":
            os._exit(17)
        return generation_of(out, count, "length", words, params, logprobs)

    def abort(self) -> None:
        return None

    # batching (engines.batch): each request paced on its own, one token per due step
    def add_request(self, key: str, prompt: str, params: GenParams) -> None:
        check_params(params)
        text, directives = parse_directives(prompt)
        if "error" in directives:
            raise RuntimeError("sim: scripted error")
        limit = 10**12 if "hang" in directives else params.max_tokens
        token_s = directives.get("slow") or self.token_s
        self._batch[key] = _SimRequest(text.split() or ["tok"], limit, token_s, time.monotonic() + token_s,
                                       "crash" in directives, params.logprobs)

    def step(self) -> list[StepOutput]:
        if not self._batch:
            return []
        wait = min(r.next_at for r in self._batch.values()) - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, 0.01))
        now = time.monotonic()
        outputs = []
        for key, req in list(self._batch.items()):
            if req.next_at > now:
                continue
            if req.crash and req.done >= PREFIX_TOKENS:
                os._exit(17)
            piece = req.words[req.done % len(req.words)] + " "
            req.done += 1
            req.next_at += req.token_s
            finished = req.done >= req.limit
            if finished:
                del self._batch[key]
            logprobs = (sim_logprob(piece, req.logprobs),) if req.logprobs is not None else ()
            outputs.append(StepOutput(key, piece, 1, finished, "length" if finished else None, len(req.words),
                                      logprobs=logprobs))
        return outputs

    def abort_requests(self, keys: list[str]) -> None:
        for key in keys:
            self._batch.pop(key, None)

    def release(self) -> None:
        _LEAKED.clear()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": "sim", "token_s": self.token_s, "max_model_len": MAX_MODEL_LEN,
                "max_logprobs": 20, "unsupported": dict(UNSUPPORTED)}


@dataclass
class _SimRequest:
    words: list[str]
    limit: int
    token_s: float
    next_at: float
    crash: bool
    logprobs: int | None = None
    done: int = 0


def _spin_forever() -> None:
    n = 0
    while True:  # a pure-Python runaway: SIGINT reaches it between bytecodes
        n += 1
