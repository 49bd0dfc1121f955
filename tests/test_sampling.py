"""The transformers backend's sampling in torch (vLLM's definitions of penalties, biases, min_p; logprobs of the raw
distribution)."""

from __future__ import annotations

import pytest
import torch

from llmsup.engines.protocol import GenParams, TokenBias
from llmsup.engines.sampling import LogitsProcessor, pick_next, token_logprob

pytestmark = pytest.mark.real  # torch: a model library (make test-fast leaves it out)


def test_logits_processor_follows_vllm_definitions() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    params = GenParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25,
                       logit_bias=(TokenBias(3, 10.0),))
    process = LogitsProcessor(params, prompt_ids=[0], vocab=4, device=torch.device("cpu"))
    process.add(1)
    process.add(1)
    out = process(logits)
    # token 0: seen in the prompt -> 2/2; token 1: seen, negative -> -2*2, then -(0.25*2 + 0.5); token 3: +10
    assert out.tolist() == pytest.approx([1.0, -5.0, 1.0, 10.5])
    assert pick_next(out, GenParams(temperature=0.0), None) == 3
    only_top = pick_next(torch.tensor([5.0, 0.0, 0.0]), GenParams(temperature=1.0, min_p=0.5),
                         torch.Generator().manual_seed(0))
    assert only_top == 0  # min_p drops tokens under half the top probability


def test_token_logprob_is_of_the_raw_distribution() -> None:
    logits = torch.tensor([0.0, 1.0, 2.0])
    entry = token_logprob(logits, 1, 2, decode=lambda i: f"t{i}")
    expected = torch.log_softmax(logits, -1)
    assert entry.logprob == pytest.approx(float(expected[1])) and entry.rank == 2 and entry.token == "t1"
    assert [t.token_id for t in entry.top] == [2, 1]
