"""Chat messages -> one prompt. The seam for real chat templates.

``template_for(sup)`` picks the template: today always :class:`SimpleTemplate`. A backend that knows its
model's chat template (vLLM / transformers tokenizers do) can publish it later in its ``describe()`` dict
(e.g. a ``chat_template`` entry) and a template class wrapping it plugs in here; routes only call
``render``.
"""

from __future__ import annotations

from typing import Protocol

from supervisor.service import Supervisor
from web.openai_schemas import ChatMessage

ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


class ChatTemplate(Protocol):
    def render(self, messages: list[ChatMessage], add_generation_prompt: bool = True) -> str:
        """The prompt text for these messages."""


class SimpleTemplate:
    """``Role: content`` lines, then ``Assistant:`` for the model to continue."""

    def render(self, messages: list[ChatMessage], add_generation_prompt: bool = True) -> str:
        lines = [f"{ROLE_NAMES[m.role]}: {m.text}" for m in messages]
        if add_generation_prompt:
            lines.append("Assistant:")
        return "\n".join(lines)


def template_for(sup: Supervisor) -> ChatTemplate:
    return SimpleTemplate()
