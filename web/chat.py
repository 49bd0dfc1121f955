"""Chat messages -> one prompt. The seam for real chat templates.

``template_for(sup)`` picks the template: the model's own (transformers and vLLM backends publish their
tokenizer's ``chat_template`` in ``describe()``), else :class:`SimpleTemplate`; routes only call ``render``.
"""

from __future__ import annotations

from typing import Any, Protocol

from llmsup.supervisor.core.requests import InvalidRequest
from llmsup.supervisor.port import ControlPlane
from llmsup.web.openai_schemas import ChatMessage

ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool",
              "function": "Function"}


class ChatTemplate(Protocol):
    def render(self, messages: list[ChatMessage], add_generation_prompt: bool = True,
               template_kwargs: dict[str, Any] | None = None) -> str:
        """The prompt text for these messages (``template_kwargs``: the request's ``chat_template_kwargs``)."""


class SimpleTemplate:
    """``Role: content`` lines, then ``Assistant:`` for the model to continue."""

    def render(self, messages: list[ChatMessage], add_generation_prompt: bool = True,
               template_kwargs: dict[str, Any] | None = None) -> str:
        lines = [f"{ROLE_NAMES[m.role]}: {m.text}" for m in messages]
        if add_generation_prompt:
            lines.append("Assistant:")
        return "\n".join(lines)


class ModelTemplate:
    """The model's own Jinja chat template (published by the engines' backend), rendered in a sandbox
    the way Hugging Face tokenizers render it."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self.template = env.from_string(source)
        self.special = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: list[ChatMessage], add_generation_prompt: bool = True,
               template_kwargs: dict[str, Any] | None = None) -> str:
        from jinja2 import TemplateError

        plain = [{"role": m.role, "content": m.text} for m in messages]
        extra = {k: v for k, v in (template_kwargs or {}).items()
                 if k not in ("messages", "add_generation_prompt", *self.special)}
        try:
            return self.template.render(messages=plain, add_generation_prompt=add_generation_prompt, **extra,
                                        **self.special)
        except (TemplateError, ValueError, TypeError) as exc:  # the model's template refused these messages
            raise InvalidRequest(f"messages rejected by the model's chat template: {exc}") from None


def render_chat(template: ChatTemplate, messages: list[ChatMessage], add_generation_prompt: bool = True,
                continue_final_message: bool = False, template_kwargs: dict[str, Any] | None = None) -> str:
    """The prompt for a chat request; with ``continue_final_message`` it ends right after the last message's
    content (left open for the model to continue it, as Hugging Face and vLLM do)."""
    if not continue_final_message:
        return template.render(messages, add_generation_prompt, template_kwargs)
    rendered = template.render(messages, False, template_kwargs)
    final = messages[-1].text
    cut = rendered.rfind(final) if final else -1
    if cut < 0:
        raise InvalidRequest("continue_final_message: the final message's content is not in the rendered prompt")
    return rendered[: cut + len(final)]


def _raise(message: str) -> None:
    raise ValueError(message)


def template_for(sup: ControlPlane) -> ChatTemplate:
    """The serving model's chat template when an engine published one, else ``Role: content`` lines."""
    for info in sup.model_facts():
        if info.get("chat_template"):
            key = info["chat_template"]
            if key not in _CACHE:
                _CACHE[key] = ModelTemplate(key, info.get("bos_token", ""), info.get("eos_token", ""))
            return _CACHE[key]
    return SimpleTemplate()


_CACHE: dict[str, ModelTemplate] = {}
