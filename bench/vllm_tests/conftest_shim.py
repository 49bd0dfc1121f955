"""Root conftest of the assembled tree: every tokenizer the tests ask for by name is the served tiny model's
(the named hub models cannot be downloaded here; the server serves the tiny model under their names), and a
hub download of adapter files gives an empty folder."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from llmsup.engines.torch_compat import hide_mismatched_extensions

hide_mismatched_extensions()  # a CUDA torchvision beside the CPU torch breaks transformers' imports

import vllm.tokenizers as _tokenizers  # noqa: E402
import vllm.transformers_utils.repo_utils as _repo_utils  # noqa: E402

_original = _tokenizers.get_tokenizer


def _tiny_tokenizer(tokenizer_name: Any = None, *args: Any, **kwargs: Any) -> Any:
    kwargs.pop("tokenizer_mode", None)
    return _original(os.environ["LLMSUP_VLLM_TESTS_MODEL"], *args, **kwargs)


_tokenizers.get_tokenizer = _tiny_tokenizer


class _NoHub:
    """Adapter downloads (LoRA files the tests pass to ``vllm serve``): an empty folder; llmsup serves none."""

    def snapshot_download(self, *args: Any, **kwargs: Any) -> str:
        return tempfile.mkdtemp(prefix="no-hub-")


_repo_utils.hf_api = lambda *args, **kwargs: _NoHub()
