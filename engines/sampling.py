"""Next-token choice from logits: greedy, or temperature / top-k / top-p sampling."""

from __future__ import annotations

import torch

from llmsup.engines.protocol import GenParams


def make_generator(params: GenParams, device: torch.device) -> torch.Generator | None:
    """A seeded generator when the request names a seed (reproducible sampling), else None."""
    if params.temperature <= 0 or params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(params.seed))


def pick_next(logits: torch.Tensor, params: GenParams, generator: torch.Generator | None) -> int:
    """Choose the next token id from a 1-D logits vector."""
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
    return int(torch.multinomial(probs, 1, generator=generator).item())
