"""What a web front end needs to render chat messages the way the model was trained to see them."""

from __future__ import annotations

from typing import Any


def chat_info(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's chat template (Jinja source) and special tokens, or {} when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return {}
    return {
        "chat_template": template,
        "bos_token": getattr(tokenizer, "bos_token", None) or "",
        "eos_token": getattr(tokenizer, "eos_token", None) or "",
    }
