"""Loaded by Python at start in child processes that llmsup's engines spawn (``PYTHONPATH`` names this
folder): hides torch extensions built for another torch, then hands on to any other ``sitecustomize``."""

import importlib.util
import sys
from pathlib import Path

_here = str(Path(__file__).parent)
try:
    from llmsup.engines.torch_compat import hide_mismatched_extensions

    hide_mismatched_extensions()
except ImportError:
    pass
sys.path[:] = [p for p in sys.path if p != _here]
sys.modules.pop("sitecustomize", None)
if importlib.util.find_spec("sitecustomize") is not None:
    import sitecustomize  # noqa: F401  (the environment's own, if any)
