"""Decode speed as answers grow: tokens/s at 128, 1,000 and 4,000 output tokens, plain transformers beside llmsup.

For one prompt, greedy, the end-of-sequence token ignored (every run makes exactly N tokens):

- plain: ``model.generate(max_new_tokens=N, min_new_tokens=N, do_sample=False)`` (transformers' own loop and its
  default dynamic cache);
- llmsup: the transformers backend's token loop (engines/transformers_backend.py, what an engine runs for a job),
  with a dynamic KV cache and with a static one (engines/decode_cache.py), and on a GPU the static cache with the
  compiled one-token step (the backend's default there).

Each (kind, N) runs ``--rounds`` times, interleaved kind by kind so a change of load hits all alike; the table has
the median tokens/s (and the slowest round's). A count beyond the model's context (the tiny local model: 2,048
positions) is lowered to fit, and the table says so. The load average is printed with the figures.

    .venv/bin/python -m bench.bench_decode [--model PATH] [--tokens 128,1000,4000] [--rounds 3] [--device auto]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from bench.servers import loadavg
from bench.stats import table

PROMPT = "The story of a job that ran on an engine, told from the first token to the last:"


def plain_generate(model: Any, tokenizer: Any, device: str, n: int) -> float:
    """Seconds for plain ``generate`` to make ``n`` tokens."""
    import torch

    ids = tokenizer(PROMPT, return_tensors="pt").input_ids.to(device)
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or 0)
    sync(device)
    assert out.shape[1] - ids.shape[1] == n
    return time.perf_counter() - t0


def llmsup_generate(backend: Any, n: int) -> float:
    """Seconds for the backend's token loop to make ``n`` tokens."""
    from llmsup.engines.protocol import GenParams

    sync(backend.device)
    t0 = time.perf_counter()
    gen = backend.generate(PROMPT, GenParams(max_tokens=n, ignore_eos=True), lambda *token: None)
    sync(backend.device)
    assert gen.tokens == n, gen.tokens
    return time.perf_counter() - t0


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def load_backends(model: str, gpu: str, dtype: str | None) -> dict[str, Any]:
    """llmsup's backend on the model, per KV cache kind (and compiled on a GPU)."""
    from llmsup.engines.transformers_backend import TransformersBackend

    kinds: dict[str, dict[str, Any]] = {"llmsup dynamic": {"kv_cache": "dynamic"},
                                        "llmsup static": {"kv_cache": "static", "compile": False}}
    if gpu:
        kinds["llmsup static+compile"] = {"kv_cache": "static", "compile": True}
    backends = {}
    for name, options in kinds.items():
        backend = TransformersBackend({"model": model, "gpu": gpu, "options": {**options, **({"dtype": dtype} if dtype
                                                                                             else {})}})
        backend.load()
        backends[name] = backend
    return backends


@dataclass
class Decode:
    """The runs of one measurement: tokens/s per (kind, output length), and what they ran on."""

    runs: dict[tuple[str, int], list[float]]
    kinds: list[str]
    counts: list[int]  # asked
    fitted: list[int]  # run (lowered to the model's context)
    device: str
    dtype: str
    model: str
    rounds: int

    def median(self, kind: str, n: int) -> float:
        return statistics.median(self.runs[(kind, n)])

    def table(self) -> str:
        headers = ["output tokens", *(f"{k} tok/s (min)" for k in self.kinds)]
        rows: list[list[object]] = []
        for asked, n in zip(self.counts, self.fitted):
            label = str(n) if n == asked else f"{n} (asked {asked}: the model's context)"
            rows.append([label, *(f"{self.median(k, n):.1f} ({min(self.runs[(k, n)]):.1f})" for k in self.kinds)])
        title = (f"decode tok/s by output length, {self.device} ({self.dtype}, model {self.model}), {self.rounds} "
                 f"rounds, load {loadavg()}")
        return table(title, headers, rows)


def collect(model_path: str | None, counts: list[int], rounds: int, device: str, dtype: str | None) -> Decode:
    """tokens/s per kind and output length."""
    import torch

    from llmsup.engines.tinymodel import ensure_tiny_model

    use_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    gpu = "0" if use_gpu else ""
    model_path = model_path or ensure_tiny_model(tempfile.mkdtemp(prefix="bench-decode-") + "/tiny-llama")
    backends = load_backends(model_path, gpu, dtype)
    first = next(iter(backends.values()))
    plain_model, tokenizer, dev = first.model, first.tokenizer, first.device
    room = first.max_len - len(tokenizer(PROMPT).input_ids)
    fitted = [min(n, room) for n in counts]
    for backend in backends.values():  # warm-up: allocation, compilation, CUDA graphs for each length
        for n in fitted:
            llmsup_generate(backend, n)
    plain_generate(plain_model, tokenizer, dev, min(fitted))
    runs: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for n in fitted:
            runs.setdefault(("plain generate", n), []).append(n / plain_generate(plain_model, tokenizer, dev, n))
            for name, backend in backends.items():
                runs.setdefault((name, n), []).append(n / llmsup_generate(backend, n))
    result = Decode(runs, ["plain generate", *backends], counts, fitted, dev, first.dtype, model_path, rounds)
    backends.clear()
    del first, plain_model
    gc.collect()
    if use_gpu:
        torch.cuda.empty_cache()
    return result


def measure(model_path: str | None, counts: list[int], rounds: int, device: str, dtype: str | None) -> str:
    """The table of tokens/s per kind and output length."""
    return collect(model_path, counts, rounds, device, dtype).table()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model path or id (default: the tiny local model)")
    parser.add_argument("--tokens", default="128,1000,4000", help="output lengths, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16... (default: the backend's)")
    args = parser.parse_args()
    counts = [int(n) for n in args.tokens.split(",") if n.strip()]
    print(measure(args.model, counts, args.rounds, args.device, args.dtype))


if __name__ == "__main__":
    main()
