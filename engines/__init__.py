"""Code that runs inside IPyParallel engine processes.

Nothing here imports from ``llmsup.supervisor`` or ``llmsup.web``: this package
is shipped to engine processes, possibly on other hosts.
"""

from llmsup.engines.torch_compat import hide_mismatched_extensions

# Before anything imports transformers or vLLM: a CUDA build of torchvision beside a CPU torch breaks both.
hide_mismatched_extensions()
