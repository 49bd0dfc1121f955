"""Root conftest of the assembled tree: every tokenizer the tests ask for by name is the served tiny model's
(the named hub models cannot be downloaded here; the server serves the tiny model under their names)."""

from __future__ import annotations

import os
from typing import Any

from llmsup.engines.torch_compat import hide_mismatched_extensions

hide_mismatched_extensions()  # a CUDA torchvision beside the CPU torch breaks transformers' imports

import vllm.tokenizers as _tokenizers  # noqa: E402

_original = _tokenizers.get_tokenizer


def _tiny_tokenizer(tokenizer_name: Any = None, *args: Any, **kwargs: Any) -> Any:
    kwargs.pop("tokenizer_mode", None)
    return _original(os.environ["LLMSUP_VLLM_TESTS_MODEL"], *args, **kwargs)


_tokenizers.get_tokenizer = _tiny_tokenizer
