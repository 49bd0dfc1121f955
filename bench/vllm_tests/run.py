"""Run vLLM's own OpenAI-entrypoint tests (from a vLLM source tree of the version llmsup serves) against
``llmsup serve`` on the tiny local model, and print the pass counts per module.

    python -m bench.vllm_tests.run --vllm-tests /path/to/vllm/tests [--group openai|pooling-tools|all]
                                   [--module openai/completion/test_completion.py]

The chosen modules are copied unchanged into a scratch tree whose ``tests/utils.py`` is ``shim_utils.py``
(``RemoteOpenAIServer`` starts llmsup instead of ``vllm serve``) and whose root ``conftest.py`` maps every
tokenizer name to the tiny model's. vLLM's sdist on PyPI carries its ``tests/`` folder. The tests were written
for real models (OPT-125m, Qwen, Zephyr...): assertions on their exact token counts or texts cannot hold on
the tiny random model and fail for that reason alone; the table says which failed and the log says why.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULES = (
    "openai/completion/test_completion.py",
    "openai/chat_completion/test_chat.py",
    "openai/chat_completion/test_chat_echo.py",
    "openai/chat_completion/test_chat_logit_bias_validation.py",
    "openai/test_return_token_ids.py",
    "serve/tokenize/test_tokenization.py",
    "serve/instrumentator/test_basic.py",
)
# pooling models (tiny embedding model, tiny cross-encoder) and tool calling, offline on the tiny local models
POOLING_AND_TOOLS = (
    "pooling/embed/test_online.py",
    "pooling/embed/test_online_dimensions.py",
    "pooling/scoring/test_bi_encoder_online.py",
    "pooling/scoring/test_cross_encoder_online.py",
    "pooling/classify/test_online.py",
    "openai/chat_completion/test_completion_with_function_calling.py",
)
# what the pooling modules import beside tests/utils.py: model helpers, copied for them alone, and vLLM's root
# conftest (its HfRunner), which conftest_tests_shim.py stands in for
POOLING_SUPPORT = ("ci_envs.py", "models", "entrypoints/pooling/scoring/util.py")
GROUPS = {"openai": MODULES, "pooling-tools": POOLING_AND_TOOLS, "all": MODULES + POOLING_AND_TOOLS}
HERE = Path(__file__).parent
COUNT = re.compile(r"(\d+) (passed|failed|error|errors|skipped|xfailed|xpassed)")
PYTEST_INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"


def assemble(vllm_tests: Path, modules: list[str], root: Path) -> None:
    tests = root / "tests"
    (tests / "entrypoints").mkdir(parents=True)
    (tests / "__init__.py").write_text("")
    shutil.copy(HERE / "shim_utils.py", tests / "utils.py")
    shutil.copy(HERE / "conftest_shim.py", root / "conftest.py")
    (root / "pytest.ini").write_text(PYTEST_INI)
    shutil.copy(vllm_tests / "entrypoints" / "conftest.py", tests / "entrypoints" / "conftest.py")
    if any(module.startswith("pooling/") for module in modules):
        shutil.copy(HERE / "conftest_tests_shim.py", tests / "conftest.py")
        for name in POOLING_SUPPORT:
            source, target = vllm_tests / name, tests / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            elif source.exists():
                shutil.copy(source, target)
    for module in modules:
        source = vllm_tests / "entrypoints" / module
        target = tests / "entrypoints" / module
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        for parent in target.relative_to(tests).parents:  # every package on the way has its __init__
            init = tests / parent / "__init__.py"
            if not init.exists():
                init.write_text("")


def run_module(root: Path, module: str, log_dir: Path, timeout_s: float) -> dict[str, int]:
    log = log_dir / (module.replace("/", "__") + ".log")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", "--timeout", str(int(timeout_s)),
           "-c", str(root / "pytest.ini"), "--rootdir", str(root), f"tests/entrypoints/{module}"]
    with open(log, "wb") as out:
        subprocess.run(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s + 120, check=False)
    tail = log.read_text(errors="replace").splitlines()[-1:] or [""]
    counts: dict[str, int] = {}
    for number, kind in COUNT.findall(tail[0]):
        counts[kind.rstrip("s") if kind == "errors" else kind] = int(number)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-tests", type=Path, required=True, help="a vLLM source tree's tests/ folder")
    parser.add_argument("--module", action="append", help="a module under tests/entrypoints (repeatable)")
    parser.add_argument("--group", choices=sorted(GROUPS), default="openai", help="the modules run without --module")
    parser.add_argument("--model", help="model directory (default: the tiny local model, built if needed)")
    parser.add_argument("--timeout-s", type=float, default=1800, help="per module")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="llmsup-vllm-tests-"))
    model = args.model
    if model is None:
        from llmsup.engines.tinymodel import ensure_tiny_model

        model = ensure_tiny_model(str(work / "models" / "tiny-llama"))
    os.environ["LLMSUP_VLLM_TESTS_MODEL"] = model
    from llmsup.engines.tinymodel import ensure_tiny_cross_encoder, ensure_tiny_embedder

    os.environ["LLMSUP_VLLM_TESTS_EMBED_MODEL"] = ensure_tiny_embedder(model, str(work / "models" / "tiny-embed"))
    os.environ["LLMSUP_VLLM_TESTS_RERANK_MODEL"] = ensure_tiny_cross_encoder(model, str(work / "models" / "tiny-rerank"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    modules = args.module or list(GROUPS[args.group])
    root = work / "tree"
    assemble(args.vllm_tests, modules, root)
    print(f"vLLM's entrypoint tests against llmsup serve (model {model}); logs in {work}")
    print("| module | passed | failed | errors | skipped | s |")
    print("|---|---|---|---|---|---|")
    totals = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for module in modules:
        t0 = time.monotonic()
        counts = run_module(root, module, work, args.timeout_s)
        for key in totals:
            totals[key] += counts.get(key, 0)
        print(f"| {module} | {counts.get('passed', 0)} | {counts.get('failed', 0)} | {counts.get('error', 0)} | "
              f"{counts.get('skipped', 0)} | {time.monotonic() - t0:.0f} |", flush=True)
    print(f"| total | {totals['passed']} | {totals['failed']} | {totals['error']} | {totals['skipped']} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
