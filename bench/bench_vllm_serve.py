"""llmsup against bare ``vllm serve`` under vLLM's own benchmark client, in one run.

Same tiny model, one engine each, same model settings (dtype float32, enforce_eager, max_model_len 2048,
1 GiB KV cache, seed 0: llmsup's CPU defaults, given to both). (a) bare ``vllm serve``; (b) ``llmsup serve
--backend vllm --engines 1 --slots-per-engine 32`` (one batched engine). Both are driven by ``vllm bench serve``
(random dataset, input 64 / output 128 tokens, ``--ignore-eos``, ``--temperature 0``) against ``/v1/completions``
(streamed) at each concurrency; the table puts request/s, output tokens/s, TTFT and TPOT p50/p99 side by side
with the ratio (b)/(a). Both servers stay up (an idle one takes no CPU) and the client runs against them in turn,
ABBA, ``--repeat`` runs each, pooled from the per-request data, so that a change of load on this shared machine
hits both alike. Client and servers share this machine's cores; the load average is printed next to every figure.
Both servers are started in this process's session (see bench/servers.py); IPyParallel starts llmsup's engine in
a new session of its own, as in production.

Then deadline enforcement inside a full batch: llmsup keeps 16 long requests running while runaways (``max_tokens``
null: the rest of the context; a short deadline) are sent; per runaway, deadline -> slot free = the job's finished_at -
(started_at + deadline_s).

    .venv/bin/python -m bench.bench_vllm_serve [--concurrency 1,4,16] [--num-prompts 32,64,64]
        [--repeat 2] [--runaways 32] [--deadline 1.5] [--engine-threads N] [--only vllm|llmsup]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.servers import DTYPE, ENFORCE_EAGER, MAX_MODEL_LEN, ROOT, LlmsupServe, Server, VllmServe, base_env, loadavg
from bench.stats import pct, summary_ms, table
from llmsup.engines.tinymodel import ensure_tiny_model

INPUT_LEN, OUTPUT_LEN = 64, 128
METRICS = ["request_throughput", "output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
           "p99_tpot_ms"]


def bench_client(server: Server, model: str, concurrency: int, prompts: int, out: Path, work: Path) -> dict[str, Any]:
    """One ``vllm bench serve`` run; returns its JSON result with the load average before and after."""
    argv = [sys.executable, "-m", "bench.vllm_cli", "bench", "serve", "--backend", "vllm", "--base-url", server.url,
            "--endpoint", "/v1/completions", "--model", model, "--dataset-name", "random",
            "--random-input-len", str(INPUT_LEN), "--random-output-len", str(OUTPUT_LEN), "--ignore-eos",
            "--temperature", "0", "--num-prompts", str(prompts), "--max-concurrency", str(concurrency),
            "--seed", "0", "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name,
            "--disable-tqdm", "--save-detailed"]
    load_before = loadavg()
    with open(out.with_suffix(".log"), "wb") as log:
        proc = subprocess.run(argv, env=base_env(work / "cache-client"), cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=900)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"vllm bench serve failed ({proc.returncode}); see {out.with_suffix('.log')}")
    result = json.loads(out.read_text())
    result["load_before"], result["load_after"] = load_before, loadavg()
    if result.get("failed"):
        errors = [e for e in result.get("errors", []) if e][:3]
        print(f"  WARNING: {result['failed']} failed requests against {server.name}: {errors}", flush=True)
    return result


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """vLLM's metrics over several runs of one configuration, from the per-request data (--save-detailed)."""
    ttfts, tpots, tokens, completed, duration = [], [], 0, 0, 0.0
    for r in runs:
        duration += r["duration"]
        completed += r["completed"]
        tokens += r["total_output_tokens"]
        for ttft, lat, n in zip(r["ttfts"], r["latencies"], r["output_lens"]):
            if n:  # failed requests have no output
                ttfts.append(ttft)
                if n > 1:
                    tpots.append((lat - ttft) / (n - 1))
    return {"request_throughput": completed / duration, "output_throughput": tokens / duration,
            "median_ttft_ms": pct(ttfts, 0.5) * 1000, "p99_ttft_ms": pct(ttfts, 0.99) * 1000,
            "median_tpot_ms": pct(tpots, 0.5) * 1000, "p99_tpot_ms": pct(tpots, 0.99) * 1000,
            "failed": sum(r["failed"] for r in runs), "runs": len(runs), "requests": completed,
            "loads": [r["load_after"].split("/")[0] for r in runs]}


def run_both(model: str, work: Path, plan: list[tuple[int, int]], args: argparse.Namespace,
             results: dict[str, dict[int, dict[str, Any]]], info: dict[str, Any],
             llmsup_env: dict[str, str] | None = None) -> None:
    """Both servers up (an idle one takes no CPU: measured 0% for vllm serve, ~0 for llmsup's engine loop);
    per concurrency the client runs against (a) and (b) in turn, ABBA, so that load drift hits both alike."""
    kinds = [k for k in ("vllm", "llmsup") if args.only in (None, k)]
    servers: dict[str, Server] = {}
    try:
        for kind in kinds:
            print(f"[{time.strftime('%H:%M:%S')}] starting {kind} (load {loadavg()})", flush=True)
            servers[kind] = VllmServe(model, work) if kind == "vllm" else LlmsupServe(
                model, work, slots=args.slots, engine_threads=args.engine_threads, extra_env=llmsup_env)
            info[kind] = {"start_s": servers[kind].wait_ready()}
            print(f"  {servers[kind].name} ready in {info[kind]['start_s']:.1f}s at {servers[kind].url}", flush=True)
        if "llmsup" in servers:
            info["llmsup"]["rss_mb"] = sum(e["rss_mb"] for e in servers["llmsup"].engines())
        for conc, prompts in plan:
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
            order = kinds + kinds[::-1]  # ABBA
            for i in range(args.repeat):
                for kind in (order[:len(kinds)] if i % 2 == 0 else order[len(kinds):]):
                    out = work / "results" / f"{kind}-c{conc}-{i}.json"
                    r = bench_client(servers[kind], model, conc, prompts, out, work)
                    runs[kind].append(r)
                    print(f"  {kind:<6} c={conc:<3} n={prompts:<3} {r['output_throughput']:7.1f} out tok/s, TTFT p50 "
                          f"{r['median_ttft_ms']:.0f} p99 {r['p99_ttft_ms']:.0f} ms, TPOT p50 {r['median_tpot_ms']:.1f} ms, "
                          f"failed {r['failed']} (load {r['load_before']} -> {r['load_after']})", flush=True)
            for kind in kinds:
                results[kind][conc] = pooled(runs[kind])
        if "vllm" in servers:
            servers.pop("vllm").stop()
        if "llmsup" in servers and args.runaways:
            info["deadline"] = asyncio.run(deadline_in_full_batch(servers["llmsup"], args))  # type: ignore[arg-type]
    finally:
        for server in servers.values():
            server.stop()


async def deadline_in_full_batch(server: LlmsupServe, args: argparse.Namespace) -> dict[str, Any]:
    """16 long requests keep the batch full; runaways with a short deadline: deadline -> slot free."""
    stop = asyncio.Event()
    fillers: list[dict[str, Any]] = []
    load_before = loadavg()
    limits = httpx.Limits(max_connections=args.fill + 16, max_keepalive_connections=args.fill + 16)
    async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits, headers=server.headers) as http:
        async def completion(prompt: str, max_tokens: int | None, deadline: float) -> dict[str, Any]:
            resp = await http.post("/v1/completions", json={
                "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,
                "deadline_s": deadline})
            resp.raise_for_status()
            return resp.json()

        async def filler(i: int) -> None:
            n = 0
            while not stop.is_set():
                body = await completion(f"Long request {i}.{n}: tell a story", MAX_MODEL_LEN - 100, 600)
                fillers.append(body)
                n += 1

        async def engine_active() -> int:
            engines = (await http.get("/admin/engines", headers=server.admin_headers())).json()["engines"]
            return sum(len(e["jobs"]) for e in engines)

        tasks = [asyncio.ensure_future(filler(i)) for i in range(args.fill)]
        end = time.monotonic() + 60
        while await engine_active() < args.fill and time.monotonic() < end:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # the fillers are decoding now

        lags: list[float] = []
        active: list[int] = []
        statuses: dict[str, int] = {}
        tokens: list[int] = []
        sem = asyncio.Semaphore(args.runaway_concurrency)

        async def runaway(i: int) -> None:
            async with sem:
                active.append(await engine_active())
                # max_tokens null: the rest of the context, as vLLM (more than the context is a 400 there and here)
                body = await completion(f"Runaway {i}: never stop", None, args.deadline)
                job = (await http.get(f"/v1/jobs/{body['llmsup']['job_id']}")).json()
                statuses[job["status"]] = statuses.get(job["status"], 0) + 1
                tokens.append(job["tokens"])
                started = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00")).timestamp()
                finished = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00")).timestamp()
                lags.append(finished - (started + job["deadline_s"]))

        t0 = time.monotonic()
        await asyncio.gather(*(runaway(i) for i in range(args.runaways)))
        wall = time.monotonic() - t0
        stop.set()
        for t in tasks:  # a filler still running is cut off (the client goes away: llmsup cancels its job)
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    bad_fillers = [f for f in fillers if f["choices"][0]["finish_reason"] != "length"]
    return {"lags": lags, "statuses": statuses, "tokens": tokens, "active": active, "wall_s": wall,
            "fillers_done": len(fillers), "fillers_bad": len(bad_fillers), "load_before": load_before,
            "load_after": loadavg()}


def report(results: dict[str, dict[int, dict[str, Any]]], info: dict[str, Any], plan: list[tuple[int, int]],
           args: argparse.Namespace) -> str:
    out = []
    rows = []
    for conc, prompts in plan:
        a, b = results["vllm"].get(conc), results["llmsup"].get(conc)
        for name, key, fmt in (("req/s", "request_throughput", 2), ("output tok/s", "output_throughput", 1),
                               ("TTFT p50 ms", "median_ttft_ms", 1), ("TTFT p99 ms", "p99_ttft_ms", 1),
                               ("TPOT p50 ms", "median_tpot_ms", 2), ("TPOT p99 ms", "p99_tpot_ms", 2)):
            va = a[key] if a else float("nan")
            vb = b[key] if b else float("nan")
            ratio = vb / va if a and b and va else float("nan")
            rows.append([conc, prompts, name, round(va, fmt), round(vb, fmt), f"{ratio:.2f}x"])
        rows.append([conc, prompts, "runs x requests, failed; load 1-min after each run",
                     f"{a['runs']}x{prompts}, {a['failed']}; {' '.join(a['loads'])}" if a else "-",
                     f"{b['runs']}x{prompts}, {b['failed']}; {' '.join(b['loads'])}" if b else "-", ""])
    threads = args.engine_threads or "default"
    slots = f"{args.slots} slots" if args.slots else "vLLM's default max_num_seqs"
    out.append(table(
        f"vllm bench serve: (a) bare vllm serve vs (b) llmsup serve, 1 engine, tiny model, random {INPUT_LEN}/"
        f"{OUTPUT_LEN} tokens, --ignore-eos ({DTYPE}, enforce_eager={ENFORCE_EAGER}, max_model_len {MAX_MODEL_LEN}; "
        f"llmsup: {slots}, engine threads {threads}; {args.repeat} client runs each, interleaved ABBA, "
        f"pooled)",
        ["concurrency", "prompts", "metric", "(a) vllm serve", "(b) llmsup", "(b)/(a)"], rows))
    checks = []
    for conc, _ in plan:
        a, b = results["vllm"].get(conc), results["llmsup"].get(conc)
        if a and b:
            tok = b["output_throughput"] / a["output_throughput"]
            ttft = b["median_ttft_ms"] / a["median_ttft_ms"]
            checks.append(f"c={conc}: output tok/s {tok:.2f}x ({'ok' if tok >= 0.9 else 'MISSED'}, target >= 0.9), "
                          f"TTFT p50 {ttft:.2f}x ({'ok' if ttft <= 1.5 else 'MISSED'}, target <= 1.5)")
    out.append("\n".join(checks) + "\n")
    starts = []
    for kind in ("vllm", "llmsup"):
        if kind in info:
            extra = f", engine RSS {info[kind]['rss_mb']:.0f} MB" if "rss_mb" in info[kind] else ""
            starts.append(f"{kind}: start until ready {info[kind]['start_s']:.1f}s{extra}")
    out.append("; ".join(starts) + "\n")
    d = info.get("deadline")
    if d:
        s = summary_ms(d["lags"])
        out.append(table(
            f"llmsup: deadline enforcement inside a full batch ({args.fill} long requests running, runaways "
            f"max_tokens null (the rest of the context), deadline {args.deadline}s, {args.runaway_concurrency} at a time)",
            ["runaways", "deadline -> slot free p50 ms", "p99 ms", "max ms", "min ms", "statuses", "batch size seen",
             "tokens by deadline p50", "fillers done / not full length", "load 1-min"],
            [[s["n"], s["p50"], s["p99"], s["max"], s["min"], json.dumps(d["statuses"]),
              f"{min(d['active'])}-{max(d['active'])}", pct(d["tokens"], 0.5),
              f"{d['fillers_done']} / {d['fillers_bad']}", f"{d['load_before']} -> {d['load_after']}"]]))
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--num-prompts", default="32,64,64")
    p.add_argument("--slots", type=int, default=32)
    p.add_argument("--repeat", type=int, default=2, help="client runs per server and concurrency (ABBA order)")
    p.add_argument("--engine-threads", type=int, default=None,
                   help="LLMSUP_ENGINE_THREADS for llmsup's engine (default: llmsup's own default)")
    p.add_argument("--runaways", type=int, default=32)
    p.add_argument("--runaway-concurrency", type=int, default=2)
    p.add_argument("--fill", type=int, default=16, help="long requests that keep llmsup's batch full")
    p.add_argument("--deadline", type=float, default=1.5)
    p.add_argument("--only", choices=["vllm", "llmsup"], default=None)
    p.add_argument("--model", default=None, help="model directory (default: the tiny local model, built here)")
    p.add_argument("--work-dir", default=None, help="keep logs and results here (default: a temporary directory)")
    args = p.parse_args()
    concs = [int(x) for x in args.concurrency.split(",")]
    prompts = [int(x) for x in args.num_prompts.split(",")]
    if len(prompts) == 1:
        prompts *= len(concs)
    plan = list(zip(concs, prompts))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="llmsup-bench-vllm-"))
    (work / "results").mkdir(parents=True, exist_ok=True)
    model = args.model or ensure_tiny_model(str(work / "models" / "tiny-llama"))
    print(f"work dir {work}, model {model}, {os.cpu_count()} CPUs, load {loadavg()}", flush=True)
    results: dict[str, dict[int, dict[str, Any]]] = {"vllm": {}, "llmsup": {}}
    info: dict[str, Any] = {}
    t0 = time.monotonic()
    run_both(model, work, plan, args, results, info)
    print(f"\n(total {time.monotonic() - t0:.0f}s; results and logs in {work})\n", flush=True)
    print(report(results, info, plan, args))


if __name__ == "__main__":
    main()
