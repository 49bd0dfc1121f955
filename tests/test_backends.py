"""The real backends (transformers, vLLM) on the tiny local model, in this process.

No fakes: real tokenizer, real weights (random), real vLLM engine. Interrupts
are real SIGINTs sent to this process while a long generation runs.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from fixtures_models import backend_config, models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from llmsup.engines.protocol import Backend, Generation, GenParams, TokenLogprob
from llmsup.engines.runtime import make_backend, prepare_environment
from llmsup.engines.stopflag import StopRequested
from support.waiting import eventually

pytestmark = pytest.mark.real  # real processes (see tests/conftest.py)

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPT = "Hello, the engine"
LONG = GenParams(max_tokens=100_000, ignore_eos=True)  # runs until the model's context is full (seconds)


def _load(kind: str, model: str, run_dir: pathlib.Path) -> Iterator[Backend]:
    config = backend_config(kind, model, run_dir)
    prepare_environment(config)
    backend = make_backend(config)
    t0 = time.monotonic()
    backend.load()
    print(f"{kind} loaded in {time.monotonic() - t0:.2f}s: {backend.describe()}")
    yield backend
    backend.release()


@pytest.fixture(scope="module")
def tf_backend(tiny_model: str, models_run_dir: pathlib.Path) -> Iterator[Backend]:
    yield from _load("transformers", tiny_model, models_run_dir)


@pytest.fixture(scope="module")
def vllm_backend(tiny_model: str, models_run_dir: pathlib.Path) -> Iterator[Backend]:
    yield from _load("vllm", tiny_model, models_run_dir)


@pytest.fixture(params=["transformers", pytest.param("vllm", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue("tf_backend" if request.param == "transformers" else "vllm_backend")


class Tokens:
    """An ``on_token`` callback that keeps what each call hands over."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.ids: list[int | None] = []
        self.logprobs: list[TokenLogprob | None] = []

    def __call__(self, text: str, token_id: int | None = None, logprob: TokenLogprob | None = None, /) -> None:
        self.pieces.append(text)
        self.ids.append(token_id)
        self.logprobs.append(logprob)


def run_tokens(backend: Backend, params: GenParams, prompt: str = PROMPT) -> tuple[Generation, Tokens]:
    tokens = Tokens()
    return backend.generate(prompt, params, tokens), tokens


def run(backend: Backend, params: GenParams, prompt: str = PROMPT) -> tuple[Generation, list[str]]:
    gen, tokens = run_tokens(backend, params, prompt)
    return gen, tokens.pieces


def greedy(backend: Backend, n: int) -> Generation:
    return run(backend, GenParams(max_tokens=n, ignore_eos=True))[0]


def interrupted_long_run(backend: Backend, delay: float = 0.3) -> tuple[float, list[str]]:
    """Run a very long generate and SIGINT this process during it; returns (latency s, pieces)."""
    sent: list[float] = []

    def fire() -> None:
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    tokens = Tokens()
    pieces = tokens.pieces
    timer = threading.Timer(delay, fire)
    timer.start()
    try:
        backend.generate(PROMPT, LONG, tokens)
    except KeyboardInterrupt:
        caught = time.monotonic()
    else:
        pytest.fail("the long generation ended before the SIGINT")
    finally:
        timer.cancel()
    return caught - sent[0], pieces


@pytest.mark.timeout(240)
def test_generation_streams_real_tokens(backend: Backend) -> None:
    gen, pieces = run(backend, GenParams(max_tokens=48, ignore_eos=True))
    assert gen.tokens == 48 == len(pieces)  # one on_token call per token
    assert gen.finish_reason == "length"
    assert "".join(pieces) == gen.text and gen.text.strip()
    assert gen.prompt_tokens > 1


@pytest.mark.timeout(240)
def test_each_token_call_carries_its_id_and_logprob(backend: Backend) -> None:
    gen, tokens = run_tokens(backend, GenParams(max_tokens=12, ignore_eos=True, logprobs=2, return_token_ids=True))
    assert len(tokens.pieces) == gen.tokens == 12
    assert tuple(tokens.ids) == gen.token_ids and tuple(tokens.logprobs) == gen.logprobs  # as they came, one a call
    assert [e.token_id for e in gen.logprobs] == list(gen.token_ids)
    _, plain = run_tokens(backend, GenParams(max_tokens=4, ignore_eos=True))
    assert plain.logprobs == [None] * 4 and all(isinstance(i, int) for i in plain.ids)  # no logprobs unless asked


@pytest.mark.timeout(240)
def test_max_tokens_without_ignore_eos(backend: Backend) -> None:
    gen, pieces = run(backend, GenParams(max_tokens=7))
    assert 1 <= gen.tokens <= 7 and len(pieces) == gen.tokens
    assert gen.finish_reason == ("length" if gen.tokens == 7 else "stop")


@pytest.mark.timeout(240)
def test_stop_string_cuts_and_never_streams_the_stop(backend: Backend) -> None:
    ref = greedy(backend, 64)
    stop = ref.text[24:28]
    expected = ref.text[: ref.text.find(stop)]
    gen, pieces = run(backend, GenParams(max_tokens=64, stop=(stop,)))
    assert gen.finish_reason == "stop"
    assert gen.text == expected == "".join(pieces)
    assert len(pieces) == gen.tokens < 64


@pytest.mark.timeout(240)
def test_min_tokens_defers_stop_strings(backend: Backend) -> None:
    ref = greedy(backend, 64)
    stop = ref.text[2:5]
    early, _ = run(backend, GenParams(max_tokens=64, stop=(stop,)))
    late, _ = run(backend, GenParams(max_tokens=64, stop=(stop,), min_tokens=30))
    assert early.tokens < 30 <= late.tokens


@pytest.mark.timeout(240)
def test_greedy_is_deterministic_and_seeded_sampling_reproducible(backend: Backend) -> None:
    assert greedy(backend, 24).text == greedy(backend, 24).text
    sampled = GenParams(max_tokens=24, temperature=1.0, top_p=0.9, top_k=100, seed=7, ignore_eos=True)
    first, second = run(backend, sampled)[0], run(backend, sampled)[0]
    other = run(backend, GenParams(max_tokens=24, temperature=1.0, top_p=0.9, top_k=100, seed=8, ignore_eos=True))[0]
    assert first.text == second.text != other.text


@pytest.mark.timeout(240)
def test_sigint_interrupts_and_backend_serves_next_request(backend: Backend) -> None:
    ref = greedy(backend, 16)
    for _ in range(3):
        latency, pieces = interrupted_long_run(backend)
        assert latency < 0.5, f"SIGINT -> KeyboardInterrupt took {latency:.3f}s"
        assert pieces, "no partial output before the interrupt"
        backend.abort()
        t0 = time.monotonic()
        after = greedy(backend, 16)
        assert time.monotonic() - t0 < 5.0, "next generate was held up by the interrupted request"
        assert after.text == ref.text  # same state as before the interrupt


@pytest.mark.timeout(240)
def test_cooperative_stop(backend: Backend) -> None:
    timer = threading.Timer(0.2, backend.request_stop)  # type: ignore[attr-defined]
    timer.start()
    with pytest.raises(StopRequested) as info:
        run(backend, LONG)
    timer.cancel()
    assert isinstance(info.value, KeyboardInterrupt)  # the engine's interrupt path handles it
    backend.abort()
    assert greedy(backend, 4).tokens == 4


@pytest.mark.timeout(240)
def test_describe_names_the_tiny_random_model(backend: Backend, tiny_model: str) -> None:
    info = backend.describe()
    assert info["model"] == tiny_model and info["tiny_random_model"] is True and info["device"] == "cpu"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_vllm_interrupt_without_abort_does_not_block_next_request(vllm_backend: Backend) -> None:
    """The trap: the interrupted request lives on in EngineCore; generate drops such leftovers first."""
    interrupted_long_run(vllm_backend)
    engine = vllm_backend.llm.llm_engine  # type: ignore[attr-defined]
    assert engine.get_num_unfinished_requests() == 1
    t0 = time.monotonic()
    assert greedy(vllm_backend, 8).tokens == 8
    assert time.monotonic() - t0 < 5.0
    assert engine.get_num_unfinished_requests() == 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_vllm_abort_clears_engine(vllm_backend: Backend) -> None:
    interrupted_long_run(vllm_backend)
    engine = vllm_backend.llm.llm_engine  # type: ignore[attr-defined]
    vllm_backend.abort()
    assert engine.get_num_unfinished_requests() == 0 and not engine.has_unfinished_requests()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_transformers_and_vllm_agree_greedily(tf_backend: Backend, vllm_backend: Backend) -> None:
    """Same weights loaded two ways (both float32): the greedy token streams match."""
    assert greedy(tf_backend, 32).text == greedy(vllm_backend, 32).text


MP_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    import psutil
    from llmsup.engines.protocol import GenParams
    from llmsup.engines.runtime import make_backend, prepare_environment

    def cmdline(p):
        try:
            return " ".join(p.cmdline())
        except psutil.Error:  # a zombie or gone child: not a live process of the tree
            return "resource_tracker"

    def tree():
        return [p for p in psutil.Process().children(recursive=True)
                if "resource_tracker" not in cmdline(p)]

    def interrupt(target):
        if target == "pid":  # what the watchdog does: the engine process only
            os.kill(os.getpid(), signal.SIGINT)
        else:  # the whole process group, EngineCore and its worker included
            os.killpg(os.getpgid(0), signal.SIGINT)

    def main():
        config, target = json.loads(sys.argv[1]), sys.argv[2]
        prepare_environment(config)
        backend = make_backend(config)
        backend.load()
        kids = [(p.pid, p.create_time(), p.name()) for p in tree()]
        ref = backend.generate("Hello", GenParams(max_tokens=16, ignore_eos=True), lambda *token: None).text
        timer = threading.Timer(0.5, interrupt, (target,))
        timer.start()
        long_error = None
        try:
            backend.generate("Hello", GenParams(max_tokens=100000, ignore_eos=True), lambda *token: None)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        except Exception as exc:  # EngineCore died under the running request
            interrupted, long_error = False, type(exc).__name__
        timer.cancel()
        backend.abort()
        t0 = time.monotonic()
        try:
            after = backend.generate("Hello", GenParams(max_tokens=16, ignore_eos=True), lambda *token: None).text
            error = None
        except Exception as exc:
            after, error = None, [type(exc).__name__, getattr(exc, "transient", False)]
        next_s = time.monotonic() - t0
        alive = [pid for pid, _, _ in kids if psutil.pid_exists(pid)]
        t0 = time.monotonic()
        backend.release()
        release_s = time.monotonic() - t0
        left = [(p.pid, p.name()) for p in tree()]
        print("RESULT " + json.dumps(dict(kids=kids, alive_before_release=alive, interrupted=interrupted, long_error=long_error,
              same=after == ref, error=error, next_s=next_s, release_s=release_s, left=left)), flush=True)

    if __name__ == "__main__":  # vLLM on the CPU starts its processes with spawn
        main()
    """
)


def _gone(pid: int, created: float) -> bool:
    try:
        return psutil.Process(pid).create_time() != created
    except psutil.NoSuchProcess:
        return True


def start_mp_engine(tiny_model: str, tmp_path: pathlib.Path, target: str) -> subprocess.Popen[str]:
    """Start MP_SCRIPT in its own process group, its output to ``tmp_path/out.log`` (a pipe nobody reads yet would
    hold it up)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "mp_engine.py"
    script.write_text(MP_SCRIPT)
    config = backend_config("vllm", tiny_model, tmp_path, options={"multiprocessing": True})
    env = dict(os.environ, PYTHONPATH=str(REPO), VLLM_ENABLE_V1_MULTIPROCESSING="1")
    with open(tmp_path / "out.log", "w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, str(script), json.dumps(config), target],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            process_group=0,
        )


def finish_mp_engine(proc: subprocess.Popen[str], tmp_path: pathlib.Path) -> dict[str, Any]:
    """MP_SCRIPT's RESULT, after checking nothing outlived it (its group is killed if it does not end in time)."""
    try:
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = (tmp_path / "out.log").read_text(errors="replace")
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, out[-4000:]
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    print(result)
    assert "EngineCore" in " ".join(name for _, _, name in result["kids"]), result  # multiprocessing was on
    assert result["left"] == [], "release() left vLLM processes behind"
    eventually(lambda: all(_gone(pid, t) for pid, t, _ in result["kids"]), 15, "vLLM's processes to exit (orphans)")
    return result


@pytest.fixture(scope="module")
def mp_engine_runs(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any] | BaseException]:
    """MP_SCRIPT for both targets at once, each in its own process group and directory (vLLM's start-up is most of
    each run): target -> its RESULT, or what went wrong, which the test of that target raises."""
    base = tmp_path_factory.mktemp("mp-engine")
    procs = {target: start_mp_engine(tiny_model, base / target, target) for target in ("pid", "group")}
    runs: dict[str, dict[str, Any] | BaseException] = {}
    for target, proc in procs.items():
        try:
            runs[target] = finish_mp_engine(proc, base / target)
        except (AssertionError, subprocess.SubprocessError, OSError, ValueError) as exc:
            runs[target] = exc
    return runs


def mp_result(runs: dict[str, dict[str, Any] | BaseException], target: str) -> dict[str, Any]:
    run = runs[target]
    if isinstance(run, BaseException):
        raise run
    return run


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_vllm_multiprocessing_interrupt_and_release(mp_engine_runs: dict[str, Any]) -> None:
    """EngineCore in its own processes: SIGINT to the engine pid + abort, next request; release() stops all."""
    result = mp_result(mp_engine_runs, "pid")
    assert len(result["alive_before_release"]) == len(result["kids"])  # the interrupt killed nothing
    assert (
        result["interrupted"]
        and result["long_error"] is None
        and result["error"] is None
        and result["same"]
        and result["next_s"] < 5.0
    )


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_vllm_sigint_to_process_group_kills_engine_core(mp_engine_runs: dict[str, Any]) -> None:
    """Why the watchdog signals the engine pid only: a group SIGINT kills EngineCore; the backend says so."""
    result = mp_result(mp_engine_runs, "group")
    # The running request ends either way: KeyboardInterrupt, or EngineDead when EngineCore's death is seen first.
    assert result["interrupted"] or result["long_error"] == "EngineDead", result
    assert result["error"] == ["EngineDead", True], result  # transient: retry the job on another engine
    assert result["next_s"] < 30.0


def test_deferred_sigint_raises_after_the_section() -> None:
    from llmsup.engines.sigdefer import DeferredSigint

    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt), DeferredSigint():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        steps.append("section finished")
    assert steps == ["section finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_deferred_sigint_respects_an_ignored_sigint() -> None:
    from llmsup.engines.sigdefer import DeferredSigint

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with DeferredSigint():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_vllm_settings_per_device() -> None:
    from llmsup.engines.vllm_settings import llm_kwargs, vllm_env

    cpu = vllm_env({}, on_gpu=False, environ={})
    assert cpu == {"VLLM_NO_USAGE_STATS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert vllm_env({}, False, {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"})["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    forced = vllm_env({"multiprocessing": True, "kv_cache_gib": 4}, False, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert forced["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1" and forced["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in vllm_env({}, on_gpu=True, environ={})  # vLLM's default: on
    args = llm_kwargs("/m", {}, on_gpu=False, gpu="")
    assert args["enforce_eager"] is True and args["dtype"] == "float32" and args["max_model_len"] == 2048
    gpu = llm_kwargs("/m", {"engine_args": {"max_num_seqs": 8}}, on_gpu=True, gpu="2,3")
    assert gpu["tensor_parallel_size"] == 2 and gpu["enforce_eager"] is False and gpu["max_num_seqs"] == 8
