"""Chat messages -> one prompt, rendered by the tokenizer's own chat-template machinery.

The template is the server's (``chat_template``) or the model's own, as the engines publish it in
``describe()``; a request's own ``chat_template`` replaces it only where the server trusts request templates
(``trust_request_chat_template``, as vLLM). Rendering goes through transformers' ``apply_chat_template`` on the
web process's tokenizer (or, without one, the same ``render_jinja_template`` it calls, with the published
special tokens): the Jinja environment, extensions (``loopcontrols``: ``{% break %}``) and helpers
(``raise_exception``, ``tojson``, ``strftime_now``) are the ones models are trained against. The messages are
turned into the conversation the way vLLM turns them (``build_conversation``): content parts as one string
(``"\\n"``-joined) or as OpenAI parts (``chat_template_content_format``), tool-call arguments as objects.
Without any template: ``Role: content`` lines then ``Assistant:``. Rendering runs in a thread
(:func:`render_chat`): a long conversation through a complex template must not hold the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from llmsup.engines.chat_template import chat_info
from llmsup.supervisor.core.requests import InvalidRequest
from llmsup.supervisor.port import ControlPlane
from llmsup.web import tokens
from llmsup.web.openai_schemas import ChatMessage, TextPart

log = logging.getLogger("llmsup.web")
ContentFormat = Literal["auto", "string", "openai"]
ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool",
              "function": "Function"}
RESERVED_KWARGS = frozenset({"chat_template", "tokenize", "messages", "conversation", "add_generation_prompt",
                             "continue_final_message", "tools"})


@dataclass(frozen=True)
class ChatInput:
    """What a chat request asks to render."""

    messages: Sequence[ChatMessage]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)  # the request's chat_template_kwargs
    tools: list[dict[str, Any]] | None = None
    template: str | None = None  # the request's own chat_template
    image_placeholders: tuple[str | None, ...] = ()  # the model's text for its 1st, 2nd... image (a chat with images)


class ChatTemplate(Protocol):
    def render(self, chat: ChatInput) -> str:
        """The prompt text for this chat (raises InvalidRequest when the template refuses it)."""


class SimpleTemplate:
    """``Role: content`` lines, then ``Assistant:`` for the model to continue."""

    def render(self, chat: ChatInput) -> str:
        lines = [f"{ROLE_NAMES.get(m.role, m.role.capitalize())}: {m.text}" for m in chat.messages]
        if chat.add_generation_prompt and not chat.continue_final_message:
            lines.append("Assistant:")
        return "\n".join(lines)


class ModelTemplate:
    """A Jinja chat template rendered by transformers' machinery: the tokenizer's ``apply_chat_template`` when
    the web process has the tokenizer, else ``render_jinja_template`` with the published special tokens."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", tokenizer: Any = None,
                 content_format: ContentFormat = "auto") -> None:
        self.source = source
        self.special = {"bos_token": bos_token, "eos_token": eos_token}
        self.tokenizer = tokenizer
        self.content_format = content_format

    def render(self, chat: ChatInput) -> str:
        from jinja2 import TemplateError

        template = chat.template or self.source
        fmt = self.content_format if self.content_format != "auto" else detect_content_format(template)
        conversation = build_conversation(chat.messages, fmt, chat.image_placeholders)
        extra = {k: v for k, v in chat.kwargs.items() if k not in RESERVED_KWARGS}
        try:
            if self.tokenizer is not None:
                text = self.tokenizer.apply_chat_template(
                    conversation, tools=chat.tools, chat_template=template, tokenize=False,
                    add_generation_prompt=chat.add_generation_prompt and not chat.continue_final_message,
                    continue_final_message=chat.continue_final_message, **extra)
            else:
                from transformers.utils.chat_template_utils import render_jinja_template

                rendered, _ = render_jinja_template(
                    conversations=[conversation], tools=chat.tools, chat_template=template,
                    add_generation_prompt=chat.add_generation_prompt and not chat.continue_final_message,
                    continue_final_message=chat.continue_final_message, **{**self.special, **extra})
                text = rendered[0]
        except (TemplateError, ValueError, TypeError, KeyError, IndexError) as exc:  # the template refused them
            raise InvalidRequest(f"messages rejected by the chat template: {exc}") from None
        return str(text)


def detect_content_format(template: str) -> Literal["string", "openai"]:
    """vLLM's rule for ``auto``: ``openai`` when the template loops over a message's content, else ``string``
    (vLLM's own detector when vLLM is importable here)."""
    try:
        from vllm.renderers.hf import _detect_content_format
    except ImportError:
        return "openai" if _LOOPS_OVER_CONTENT(template) else "string"
    fmt: Literal["string", "openai"] = _detect_content_format(template, default="string")
    return fmt


def _LOOPS_OVER_CONTENT(template: str) -> bool:  # noqa: N802 - a fallback predicate, named as a constant rule
    import re

    return re.search(r"for\s+\w+\s+in\s+\w+(\[['\"]content['\"]\]|\.content)", template) is not None


def build_conversation(messages: Sequence[ChatMessage], content_format: str,
                       image_placeholders: Sequence[str | None] = ()) -> list[dict[str, Any]]:
    """The messages as a chat template receives them (vLLM's conversion): text parts joined with newlines
    (``string``: a message's images as the model's placeholder texts before its text, unless the text holds them)
    or kept as parts (``openai``: an image as ``{"type": "image"}`` where it stands); an assistant's tool-call
    arguments as objects; a tool message's ``tool_call_id``; ``reasoning`` (also as ``reasoning_content``) on an
    assistant message."""
    out: list[dict[str, Any]] = []
    seen = 0  # images so far: the i-th image's placeholder is the model's i-th
    for m in messages:
        msg: dict[str, Any] = {"role": m.role}
        parts = m.parts()
        images = m.images()
        if content_format == "openai" and m.role != "tool" and isinstance(m.content, list):
            msg["content"] = [{"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "image"}
                              for p in m.content]
        elif images:
            msg["content"] = with_placeholders("\n".join(parts), image_placeholders[seen:seen + images])
        else:
            msg["content"] = "\n".join(parts) if isinstance(m.content, list) else (m.content or "")
        seen += images
        if m.role == "assistant":
            if m.tool_calls:
                msg["tool_calls"] = [_template_call(c) for c in m.plain_tool_calls()]
            if m.reasoning_text is not None:
                msg["reasoning"] = msg["reasoning_content"] = m.reasoning_text
        if m.role == "tool" and m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            msg["name"] = m.name
        out.append(msg)
    return out


def with_placeholders(text: str, placeholders: Sequence[str | None]) -> str:
    """vLLM's rule for a message's images in ``string`` format: the placeholders the text does not already hold go
    before it, one a line (more in the text than images: vLLM's 400)."""
    counts = Counter(p for p in placeholders if p)
    missing: list[str] = []
    for placeholder, count in counts.items():
        left = count - text.count(placeholder)
        if left < 0:
            raise InvalidRequest(f"Found more '{placeholder}' placeholders in input prompt than actual multimodal "
                                 "data items.")
        missing += [placeholder] * left
    return "\n".join([*missing, text] if text else missing)


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    call = json.loads(json.dumps(call))  # a copy the template may read freely
    function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
    args = function.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args else {}
        except ValueError:  # as vLLM: a malformed history entry must not fail every later turn
            args = {}
    function["arguments"] = args if isinstance(args, dict) else {}
    call["function"] = function
    return call


def template_for(sup: ControlPlane, tokenizer: Any = None, pool: str | None = None) -> ChatTemplate:
    """The pool's serving template: the configured one, else the model's own (its tokenizer, loaded here from the
    configured model), else what the pool's engines of that model published; else ``Role: content`` lines.
    ``tokenizer``: the web process's Hugging Face tokenizer, when it has one."""
    fmt: ContentFormat = getattr(sup.settings, "chat_template_content_format", "auto")
    configured = tokens.pool_settings(sup, pool).chat_template_text()
    own = chat_info(tokenizer) if tokenizer is not None else {}
    published = next((info for info in tokens.trusted_facts(sup, pool) if info.get("chat_template")), {})
    special = own or published
    source = configured or own.get("chat_template") or published.get("chat_template")
    if source:
        return ModelTemplate(source, special.get("bos_token", ""), special.get("eos_token", ""), tokenizer, fmt)
    return SimpleTemplate()


async def render_chat(template: ChatTemplate, chat: ChatInput) -> str:
    """Render off the event loop."""
    if isinstance(template, SimpleTemplate):
        return template.render(chat)
    return await asyncio.to_thread(template.render, chat)
