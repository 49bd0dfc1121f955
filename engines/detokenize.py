"""Incremental detokenization with stop strings, for backends that decode themselves.

Token ids come in one at a time; the text grows by whole characters only (a
byte-level token that ends inside a UTF-8 character yields nothing until the
character is complete). When stop strings are set, the last ``len(stop) - 1``
characters are held back from streaming, so that no piece of a stop string is
ever streamed; the held text is released with the final token.
"""

from __future__ import annotations

from typing import Any

from llmsup.engines.protocol import StopMatcher

PROMPT_CONTEXT = 5  # prompt ids kept as decoding context (tokenizers that strip leading spaces)


class TextAssembler:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], stops: tuple[str, ...], min_tokens: int = 0) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_ids[-PROMPT_CONTEXT:])
        self.prefix = 0
        self.read = len(self.ids)
        self.matcher = StopMatcher(stops)
        self.hold = max((len(s) for s in self.matcher.stops), default=1) - 1
        self.min_tokens = min_tokens
        self.tokens = 0
        self.text = ""
        self.sent = 0
        self.stop_floor = 0  # stop strings count only in text produced after min_tokens tokens
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def add(self, token_id: int) -> None:
        """Append one generated token; sets ``stopped`` when a stop string appears."""
        self.ids.append(token_id)
        self.tokens += 1
        old_len = len(self.text)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
        if self.tokens <= self.min_tokens:
            self.stop_floor = len(self.text)
            return
        if self.matcher.stops and len(self.text) > old_len:
            start = max(self.stop_floor, old_len - self.hold)
            cut = self.matcher.cut(self.text[start:])
            if cut is not None:
                self.text = self.text[: start + len(cut)]
                self.stopped = True

    def take(self, final: bool) -> str:
        """The text not streamed yet (all of it when ``final``, else minus the held-back tail)."""
        upto = len(self.text) if final or self.stopped else max(self.sent, len(self.text) - self.hold)
        piece = self.text[self.sent : upto]
        self.sent = upto
        return piece
