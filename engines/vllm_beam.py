"""Beam search on a vLLM engine driven step by step: vLLM's own algorithm (its OpenAI server's), as a state
machine that feeds the same ``LLMEngine`` the other requests of a batch run in.

vLLM searches in rounds: each live beam is one request of one token asking ``2 x beam_width`` logprobs; every
(beam, candidate token) is scored by its cumulative logprob, an end-of-sequence candidate completes its beam, and the
best ``beam_width`` others go on; after ``max_tokens`` rounds (or when no beam is left) the completed and live beams
are ranked by vLLM's score with ``length_penalty`` (``create_sort_beams_key_function``) and the best ``beam_width``
are the answer. vLLM's ``BeamSearchSequence`` and scoring are used as they are; ``LLM.beam_search`` itself cannot be:
it runs the engine to completion, which would swallow the outputs of the other requests in a batched engine.

A job runs one search and answers with the beam of rank ``beam_index`` (choice ``j`` of an OpenAI request with
``n`` choices: the ``j``-th best of a search of width ``n``, as vLLM's choices are).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmsup.engines.protocol import FinishReason, GenParams


@dataclass
class BeamRound:
    """One round's requests: request id -> its beam, and the logprobs each answered."""

    beams: dict[str, Any] = field(default_factory=dict)
    answers: dict[str, dict[int, Any] | None] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return len(self.answers) == len(self.beams)


@dataclass(frozen=True)
class BeamAnswer:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    prompt_tokens: int


class BeamJob:
    """One beam search: hands out each round's requests, takes their answers, ranks the beams at the end."""

    def __init__(self, key: str, prompt_ids: list[int], params: GenParams, tokenizer: Any) -> None:
        from vllm.entrypoints.generate.beam_search.utils import BeamSearchSequence, create_sort_beams_key_function

        self.key, self.params, self.tokenizer = key, params, tokenizer
        self.eos = tokenizer.eos_token_id
        self.prompt_len = len(prompt_ids)
        self.prompt = {"type": "token", "prompt_token_ids": list(prompt_ids)}
        self.beams = [BeamSearchSequence(orig_prompt=self.prompt, tokens=list(prompt_ids), logprobs=[])]
        self.completed: list[Any] = []
        self.sort_key = create_sort_beams_key_function(self.eos, params.length_penalty)
        self.rounds = 0
        self.current = BeamRound()

    def sampling(self) -> Any:
        from vllm import SamplingParams

        return SamplingParams(logprobs=2 * self.params.beam_width, max_tokens=1, temperature=self.params.temperature,
                              detokenize=False)

    def next_round(self) -> list[tuple[str, dict[str, Any]]]:
        """The next round's requests (id, prompt), one per live beam."""
        self.current = BeamRound({f"{self.key}#beam{self.rounds}.{i}": beam for i, beam in enumerate(self.beams)})
        return [(rid, {"prompt_token_ids": list(beam.tokens)}) for rid, beam in self.current.beams.items()]

    def owns(self, request_id: str) -> bool:
        return request_id in self.current.beams

    def take(self, request_id: str, out: Any) -> None:
        logprobs = out.outputs[0].logprobs
        self.current.answers[request_id] = logprobs[0] if logprobs else None

    def advance(self) -> bool:
        """Rank the round's candidates into the next beams; True when the search is over."""
        from vllm.entrypoints.generate.beam_search.utils import BeamSearchSequence

        candidates = []
        for rid, beam in self.current.beams.items():
            for token_id, lp in (self.current.answers.get(rid) or {}).items():
                grown = BeamSearchSequence(orig_prompt=self.prompt, tokens=[*beam.tokens, int(token_id)],
                                           logprobs=[], cum_logprob=beam.cum_logprob + lp.logprob)
                if token_id == self.eos and not self.params.ignore_eos:
                    grown.finish_reason = "stop"
                    self.completed.append(grown)
                else:
                    candidates.append(grown)
        candidates.sort(key=lambda b: b.cum_logprob, reverse=True)  # vLLM's server keeps the best by logprob
        self.beams = candidates[:self.params.beam_width]
        self.rounds += 1
        return self.rounds >= self.params.max_tokens or not self.beams

    def answer(self) -> BeamAnswer:
        ranked = sorted([*self.completed, *self.beams], key=self.sort_key, reverse=True)[:self.params.beam_width]
        beam = ranked[min(self.params.beam_index, len(ranked) - 1)]
        ids = beam.tokens[self.prompt_len:]
        if ids and ids[-1] == self.eos and not self.params.ignore_eos and not self.params.include_stop_str_in_output:
            ids = ids[:-1]
        text = self.tokenizer.decode(ids, skip_special_tokens=self.params.skip_special_tokens)
        return BeamAnswer(text, tuple(ids), "stop" if beam.finish_reason == "stop" else "length", self.prompt_len)
