"""Next-token choice from logits: greedy, or temperature / top-k / top-p / min-p sampling; the logits
processors before it (``logit_bias``, repetition / presence / frequency penalties, as vLLM applies them) and
the logprobs of what was chosen."""

from __future__ import annotations

from collections.abc import Callable

import torch

from llmsup.engines.protocol import GenParams, TokenLogprob, TopLogprob, clamp_logprob


def make_generator(params: GenParams, device: torch.device) -> torch.Generator | None:
    """A seeded generator when the request names a seed (reproducible sampling), else None."""
    if params.temperature <= 0 or params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(params.seed))


class LogitsProcessor:
    """``allowed_token_ids``, ``logit_bias`` and the three penalties of one request (vLLM's definitions): repetition divides a
    positive logit (multiplies a negative one) of every token seen in the prompt or the output; presence
    subtracts once per token in the output, frequency once per occurrence."""

    def __init__(self, params: GenParams, prompt_ids: list[int], vocab: int, device: torch.device) -> None:
        self.params = params
        self.bias: torch.Tensor | None = None
        if params.logit_bias:
            self.bias = torch.zeros(vocab, device=device)
            for entry in params.logit_bias:
                if 0 <= entry.token_id < vocab:
                    self.bias[entry.token_id] += entry.bias
        self.allowed: torch.Tensor | None = None
        if params.allowed_token_ids:
            self.allowed = torch.zeros(vocab, dtype=torch.bool, device=device)
            self.allowed[torch.tensor([t for t in params.allowed_token_ids if 0 <= t < vocab], dtype=torch.long,
                                      device=device)] = True
        self.counts = torch.zeros(vocab, device=device)
        self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        if prompt_ids:
            self.seen[torch.tensor(prompt_ids, device=device).clamp(0, vocab - 1)] = True

    def add(self, token: int) -> None:
        if 0 <= token < self.counts.numel():
            self.counts[token] += 1
            self.seen[token] = True

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        if self.bias is None and self.allowed is None and not p.penalised:
            return logits
        logits = logits.float().clone()
        if self.allowed is not None:
            logits = logits.masked_fill(~self.allowed[: logits.numel()], float("-inf"))
        if self.bias is not None:
            logits += self.bias[: logits.numel()]
        if p.repetition_penalty != 1:
            seen = self.seen[: logits.numel()]
            penalised = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
            logits = torch.where(seen, penalised, logits)
        if p.frequency_penalty or p.presence_penalty:
            counts = self.counts[: logits.numel()]
            logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
        return logits


def pick_next(logits: torch.Tensor, params: GenParams, generator: torch.Generator | None) -> int:
    """Choose the next token id from a 1-D logits vector (already through the request's processors)."""
    if params.temperature <= 0:
        return int(torch.argmax(logits).item())
    scores = logits.float() / params.temperature
    if 0 < params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        drop = (torch.cumsum(probs, dim=-1) - probs) > params.top_p  # keeps at least the first
        scores = scores.scatter(0, order[drop], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if params.min_p > 0:
        probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def token_logprob(logits: torch.Tensor, token: int, k: int, decode: Callable[[int], str]) -> TokenLogprob:
    """The chosen token's logprob under the model's own distribution (vLLM's default, raw logprobs), its
    rank and the ``k`` likeliest tokens."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    value = float(logprobs[token].item())
    rank = int((logprobs > logprobs[token]).sum().item()) + 1
    top: tuple[TopLogprob, ...] = ()
    if k > 0:
        values, ids = torch.topk(logprobs, min(k, logprobs.numel()))
        top = tuple(TopLogprob(int(i), decode(int(i)), clamp_logprob(float(v))) for v, i in zip(values, ids))
    return TokenLogprob(token, decode(token), clamp_logprob(value), rank, top)
