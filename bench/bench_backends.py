"""Real backends: direct in one process against through the supervisor, same model, one engine.

For the same prompts (greedy, max_tokens 128, the tiny local model):

- (a) direct, in one process of its own: vLLM ``LLM.generate`` one prompt at a time (the ``LLM`` built exactly
  as llmsup's engine builds it: engines/vllm_backend.py, same environment, arguments and threads), and
  transformers through engines/transformers_backend.py (what the engine runs), plain ``model.generate`` beside it;
- (b) through the supervisor: ``llmsup serve --engines 1`` with that backend, REST submit to result
  (``POST /v1/jobs``, then ``GET /v1/jobs/{id}?wait_s=60``), one request at a time; the vLLM engine both
  single-slot (``--slots-per-engine 1``: each job is one IPyParallel task) and batched (default slots: the
  serving loop of engines/batch.py);
- vLLM's batched throughput: 8 prompts in one ``generate``, beside 8 concurrent jobs on the batched engine;
- engine start time and RSS per engine (``GET /admin/engines``), and the direct process's load time and RSS.

(a) and (b) run interleaved, request by request (the direct process and the server are both up, one idle while
the other works), so that a change of load on this shared machine hits both alike. tokens/s = generated tokens /
wall time from submit (or the ``generate`` call) to result. The load average is printed next to each figure.

    .venv/bin/python -m bench.bench_backends [--requests 8] [--rounds 2] [--max-tokens 128] [--engine-threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.servers import DTYPE, ENFORCE_EAGER, KV_CACHE_GIB, MAX_MODEL_LEN, ROOT, SEED, LlmsupServe, base_env, loadavg
from bench.stats import table
from llmsup.engines.tinymodel import ensure_tiny_model

WORDS = "the engine model token prompt queue job deadline signal interrupt cluster supervisor request stream batch"
Pair = tuple[int, float]  # (tokens, seconds)


def prompts(n: int) -> list[str]:
    words = WORDS.split()
    return [f"Prompt {i}: " + " ".join(words[(i + k) % len(words)] for k in range(24)) for i in range(n)]


# (a) direct: a child process that loads the backend, then answers requests on a pipe -------------------------------


def _child(kind: str, model: str, run_dir: str, threads: int | None, max_tokens: int) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library output goes to the log, not into the protocol
    from llmsup.engines.runtime import rss_mb

    t0 = time.monotonic()
    if kind == "vllm":
        from llmsup.engines.vllm_backend import VLLMBackend

        options = {"dtype": DTYPE, "enforce_eager": ENFORCE_EAGER, "max_model_len": MAX_MODEL_LEN,
                   "kv_cache_gib": KV_CACHE_GIB, "seed": SEED}
        backend: Any = VLLMBackend({"backend": "vllm", "model": model, "run_dir": run_dir, "gpu": "",
                                    "threads": threads, "options": options})
        backend.load()
        from vllm import SamplingParams

        sp = SamplingParams(max_tokens=max_tokens, temperature=0.0)

        def gen(ps: list[str], plain: bool) -> int:
            outs = backend.llm.generate(ps, sp, use_tqdm=False)
            return sum(len(o.outputs[0].token_ids) for o in outs)
    else:
        import torch

        from llmsup.engines.protocol import GenParams
        from llmsup.engines.transformers_backend import TransformersBackend

        backend = TransformersBackend({"backend": "transformers", "model": model, "run_dir": run_dir, "gpu": "",
                                       "threads": threads, "options": {}})
        backend.load()
        params = GenParams(max_tokens=max_tokens)

        def gen(ps: list[str], plain: bool) -> int:
            if not plain:
                return sum(backend.generate(p, params, lambda *token: None).tokens for p in ps)
            total = 0
            with torch.inference_mode():
                for p in ps:
                    ids = backend.tokenizer(p, return_tensors="pt")
                    out = backend.model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
                    total += int(out.shape[1] - ids["input_ids"].shape[1])
            return total
    import torch

    info = {"load_s": time.monotonic() - t0, "rss_mb": rss_mb(), "torch_threads": torch.get_num_threads()}
    proto.write(json.dumps(info) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "exit":
            break
        t0 = time.perf_counter()
        tokens = gen(msg["prompts"], bool(msg.get("plain")))
        proto.write(json.dumps({"tokens": tokens, "s": time.perf_counter() - t0, "rss_mb": rss_mb()}) + "\n")
    if kind == "vllm":
        backend.release()


class Direct:
    def __init__(self, kind: str, model: str, work: Path, threads: int | None, max_tokens: int) -> None:
        argv = [sys.executable, "-m", "bench.bench_backends", "--direct", kind, "--model", model,
                "--work-dir", str(work), "--max-tokens", str(max_tokens)]
        if threads:
            argv += ["--engine-threads", str(threads)]
        self.log = open(work / f"direct-{kind}.log", "wb")
        self.proc = subprocess.Popen(argv, env=base_env(work / f"cache-direct-{kind}"), cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, process_group=0)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"direct {kind} failed to start; see {work / f'direct-{kind}.log'}")
        self.info = json.loads(line)

    def run(self, ps: list[str], plain: bool = False) -> Pair:
        self.proc.stdin.write(json.dumps({"op": "gen", "prompts": ps, "plain": plain}) + "\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        self.info["rss_mb"] = out["rss_mb"]
        return out["tokens"], out["s"]

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(60)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.log.close()


# (b) through the supervisor ------------------------------------------------------------------------------------------


def submit_and_wait(http: httpx.Client, prompt: str, max_tokens: int) -> Pair:
    t0 = time.perf_counter()
    resp = http.post("/v1/jobs", json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0})
    resp.raise_for_status()
    job = resp.json()
    while job["status"] in ("queued", "running"):
        job = http.get(f"/v1/jobs/{job['id']}", params={"wait_s": 60}).json()
    elapsed = time.perf_counter() - t0
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ended {job['status']}: {job['error']}")
    return job["tokens"], elapsed


def interleave(rounds: int, ps: list[str], a: Callable[[str], Pair], b: Callable[[str], Pair]) -> dict[str, Any]:
    """a(p), b(p) alternately (the order flips every round); warm-up first."""
    for p in ps[:2]:
        a(p)
        b(p)
    ra: list[Pair] = []
    rb: list[Pair] = []
    load0 = loadavg()
    for r in range(rounds):
        for p in ps:
            if r % 2 == 0:
                ra.append(a(p))
                rb.append(b(p))
            else:
                rb.append(b(p))
                ra.append(a(p))
    return {"a": ra, "b": rb, "load": f"{load0} -> {loadavg()}"}


def supervised(backend: str, model: str, work: Path, slots: int | None, threads: int | None, direct: Direct,
               ps: list[str], args: argparse.Namespace, batch8: bool) -> dict[str, Any]:
    tag = f"-{backend}-{slots or 'default'}"
    print(f"[{time.strftime('%H:%M:%S')}] llmsup serve --backend {backend} --slots-per-engine {slots or '(default)'} "
          f"(load {loadavg()})", flush=True)
    server = LlmsupServe(model, work, slots=slots, engine_threads=threads, backend=backend, tag=tag)
    try:
        start_s = server.wait_ready()
        out: dict[str, Any] = {"start_s": start_s}
        with httpx.Client(base_url=server.url, timeout=120, headers=server.headers) as http:
            one = lambda p: submit_and_wait(http, p, args.max_tokens)  # noqa: E731
            out["single"] = interleave(args.rounds, ps, lambda p: direct.run([p]), one)
            if backend == "transformers":
                out["plain"] = interleave(1, ps, lambda p: direct.run([p], plain=True), one)
            if batch8:
                load0 = loadavg()
                ra, rb = [], []
                with ThreadPoolExecutor(8) as pool:
                    def eight(_: str) -> Pair:
                        t0 = time.perf_counter()
                        res = list(pool.map(one, ps[:8]))
                        return sum(t for t, _ in res), time.perf_counter() - t0
                    for _ in range(4):  # the first of each is a warm-up
                        ra.append(direct.run(ps[:8]))
                        rb.append(eight(""))
                out["batch8"] = {"a": ra[1:], "b": rb[1:], "load": f"{load0} -> {loadavg()}"}
            engines = server.engines()
        out.update(rss_mb=engines[0]["rss_mb"], slots=engines[0]["slots"], engine_pid=engines[0]["pid"])
        return out
    finally:
        server.stop()


# report ---------------------------------------------------------------------------------------------------------------


def rate(pairs: list[Pair]) -> float:
    return sum(t for t, _ in pairs) / sum(s for _, s in pairs)


def p50_ms(pairs: list[Pair]) -> float:
    return statistics.median(s for _, s in pairs) * 1000


def load1(load: str) -> str:
    """'a/b/c -> d/e/f' -> 'a -> d' (1-minute load average before and after)."""
    before, after = load.split(" -> ")
    return f"{before.split('/')[0]} -> {after.split('/')[0]}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=8, help="prompts per round (>= 8)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--engine-threads", type=int, default=None,
                   help="threads for the vLLM engine and the direct vLLM process (default: llmsup's default)")
    p.add_argument("--model", default=None)
    p.add_argument("--work-dir", default=None)
    p.add_argument("--only", choices=["vllm", "transformers"], default=None)
    p.add_argument("--direct", choices=["vllm", "transformers"], help=argparse.SUPPRESS)
    args = p.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="llmsup-bench-backends-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or ensure_tiny_model(str(work / "models" / "tiny-llama"))
    if args.direct:  # the child process of Direct
        _child(args.direct, model, str(work), args.engine_threads if args.direct == "vllm" else None, args.max_tokens)
        return

    ps = prompts(max(8, args.requests))
    print(f"work dir {work}, model {model}, load {loadavg()}", flush=True)
    t0 = time.monotonic()
    res: dict[str, Any] = {}
    if args.only in (None, "vllm"):
        print(f"[{time.strftime('%H:%M:%S')}] direct vLLM process (load {loadavg()})", flush=True)
        direct = Direct("vllm", model, work, args.engine_threads, args.max_tokens)
        try:
            res["vllm-1"] = supervised("vllm", model, work, 1, args.engine_threads, direct, ps, args, False)
            res["vllm-batched"] = supervised("vllm", model, work, None, args.engine_threads, direct, ps, args, True)
        finally:
            direct.close()
        res["direct-vllm"] = direct.info
    if args.only in (None, "transformers"):
        print(f"[{time.strftime('%H:%M:%S')}] direct transformers process (load {loadavg()})", flush=True)
        direct = Direct("transformers", model, work, None, args.max_tokens)
        try:
            res["tf"] = supervised("transformers", model, work, None, None, direct, ps, args, False)
        finally:
            direct.close()
        res["direct-tf"] = direct.info
    (work / "results.json").write_text(json.dumps(res, indent=1))
    print(f"\n(total {time.monotonic() - t0:.0f}s; results and logs in {work})\n", flush=True)
    print(report(res, args))


def report(res: dict[str, Any], args: argparse.Namespace) -> str:
    out = []
    rows = []
    for key, label, part in (("vllm-1", "vLLM, engine with 1 slot (one IPyParallel task per job)", "single"),
                             ("vllm-batched", "vLLM, batched engine (serving loop)", "single"),
                             ("tf", "transformers (a: the backend's generate)", "single"),
                             ("tf", "transformers (a: plain model.generate)", "plain")):
        if key not in res:
            continue
        r = res[key][part]
        ratio = rate(r["b"]) / rate(r["a"])
        rows.append([label, res[key]["slots"], len(r["a"]), rate(r["a"]), rate(r["b"]),
                     f"{ratio:.2f}x {'ok' if ratio >= 0.9 else 'MISSED'}", p50_ms(r["a"]), p50_ms(r["b"]),
                     load1(r["load"])])
    threads = args.engine_threads or "llmsup default"
    out.append(table(
        f"Single requests, tiny model, greedy, max_tokens {args.max_tokens}: (a) direct in one process vs (b) through "
        f"llmsup (REST submit -> result), 1 engine, interleaved (vLLM threads: {threads}; target (b) >= 0.9x (a))",
        ["backend / path", "slots", "requests", "(a) direct tok/s", "(b) llmsup tok/s", "(b)/(a)",
         "(a) p50 ms/request", "(b) p50 ms/request", "load 1-min"], rows))
    if "vllm-batched" in res:
        r = res["vllm-batched"]["batch8"]
        single = rate(res["vllm-batched"]["single"]["a"])
        out.append(table(
            "vLLM batched throughput, 8 prompts (3 runs, interleaved)",
            ["path", "tok/s", "vs direct single requests", "load 1-min"],
            [["(a) direct: 8 prompts in one LLM.generate", rate(r["a"]), f"{rate(r['a']) / single:.1f}x",
              load1(r["load"])],
             ["(b) llmsup batched engine: 8 concurrent jobs (REST)", rate(r["b"]), f"{rate(r['b']) / single:.1f}x",
              f"(b)/(a) = {rate(r['b']) / rate(r['a']):.2f}x"]]))
    rows = []
    for key, label in (("direct-vllm", "vLLM, direct (one process)"), ("vllm-1", "llmsup vLLM engine, 1 slot"),
                       ("vllm-batched", "llmsup vLLM engine, batched"),
                       ("direct-tf", "transformers, direct (one process)"), ("tf", "llmsup transformers engine")):
        if key in res:
            r = res[key]
            if key.startswith("direct"):
                rows.append([label, "backend load in a fresh process", r["load_s"], r["rss_mb"], r["torch_threads"]])
            else:
                rows.append([label, "llmsup serve -> /readyz (controller, engine, model)", r["start_s"], r["rss_mb"],
                             ""])
    out.append(table("Engine start and memory (RSS of the engine process, from GET /admin/engines)",
                     ["engine", "start measured", "start s", "RSS MB", "torch threads"], rows))
    return "\n".join(out)


if __name__ == "__main__":
    main()
