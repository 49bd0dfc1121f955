"""A chat's ``image_url`` content parts -> what the engines take: base64 data URLs, in the order of the parts.

As vLLM's server takes media (its ``MediaConnector``): a ``data:`` URL must be base64 (``data:<type>;base64,<data>``);
a ``file:`` URL is read only under ``--allowed-local-media-path`` (vLLM's own flag, an engine argument of the pool:
vLLM's two messages when it is not given or the file is outside it). The file is read here, off the event loop, and
sent on as a data URL, so an engine (on this host or another) never opens a path a request names. ``http(s)`` URLs
are not fetched (a 400 says so). Only a multimodal model served by the vllm backend takes images: a text-only model
refuses them with vLLM's message (``At most 0 image(s) may be provided in one prompt.``), the other backends with
theirs. The engines decode the images with vLLM's own loader (``engines/vllm_outputs.py``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import mimetypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.openai_schemas import ChatMessage, ImagePart
from llmsup.web.tokens import ServedModel

MAX_IMAGE_BYTES = 15_000_000  # a file read for a request (its data URL then fits the 20,000,000-character URL limit)
NO_PATH = "Cannot load local files without `--allowed-local-media-path`."


def bad(message: str) -> OpenAIHTTPError:
    return OpenAIHTTPError(400, message, param="messages")


def image_urls(messages: Sequence[ChatMessage]) -> list[str]:
    """The URLs of the image parts, in order (a part without one is a 400)."""
    urls = []
    for m in messages:
        for part in m.content if isinstance(m.content, list) else ():
            if isinstance(part, ImagePart):
                given = part.image_url
                url = given if isinstance(given, str) else given.url if given is not None else ""
                if not url:
                    raise bad("an image_url content part needs its image_url.url")
                urls.append(url)
    return urls


def check_model(model: ServedModel | None, count: int) -> None:
    """The served model takes ``count`` images, else the 400 vLLM (or the backend) answers."""
    if model is not None and model.backend != "vllm":
        raise bad(f"image content parts need a vision-language model served by the vllm backend; this model is "
                  f"served by the {model.backend} backend, which takes text only")
    limit = min(model.max_images, len(model.image_placeholders)) if model is not None and model.multimodal else 0
    if count > limit:
        raise bad(f"At most {limit} image(s) may be provided in one prompt.")


def allowed_path(options: dict[str, Any]) -> Path | None:
    """The pool's ``--allowed-local-media-path`` (its engine arguments), resolved; None when not given."""
    given = (options.get("engine_args") or {}).get("allowed_local_media_path") or options.get(
        "allowed_local_media_path")
    return Path(str(given)).resolve() if given else None


def _data_url(url: str) -> str:
    """A data URL checked as vLLM reads it (base64 only), returned as given."""
    spec, sep, data = url[5:].partition(",")
    if not sep:
        raise bad(f"Invalid data URL {url[:32]!r}: missing ',' separator.")
    media_type, sep, encoding = spec.rpartition(";")
    if not sep or encoding != "base64":
        raise bad("Only base64 data URLs are supported for now.")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"Invalid data URL {url[:32]!r}: its data is not base64.") from None
    return url


def _file_url(url: str, allowed: Path | None) -> str:
    """A file under the allowed path, read and returned as a data URL."""
    if allowed is None:
        raise bad(NO_PATH)
    spec = urlparse(url)
    path = Path(url2pathname(spec.netloc + spec.path))
    if allowed not in path.resolve().parents:
        raise bad(f"The file path {path} must be a subpath of `--allowed-local-media-path {allowed}`.")
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise bad(f"the image file is {size} bytes, more than {MAX_IMAGE_BYTES}")
        data = path.read_bytes()
    except OSError as exc:
        raise bad(f"cannot read the image file {path}: {exc.strerror or exc}") from None
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def _load(url: str, allowed: Path | None) -> str:
    scheme = url[:5].lower()
    if scheme == "data:":
        return _data_url(url)
    if scheme == "file:":
        return _file_url(url, allowed)
    if urlparse(url).scheme in ("http", "https"):
        raise bad("image URLs over http(s) are not fetched here: send the image as a base64 data URL (or a file URL "
                  "under --allowed-local-media-path)")
    raise bad("The URL must be either a HTTP, data or file URL.")


async def chat_images(messages: Sequence[ChatMessage], model: ServedModel | None,
                      options: dict[str, Any]) -> tuple[str, ...]:
    """The chat's images as data URLs for the engines (none: a text chat), after the model's checks; the decoding
    and file reading run off the event loop."""
    urls = image_urls(messages)
    if not urls:
        return ()
    check_model(model, len(urls))
    allowed = allowed_path(options)
    return tuple(await asyncio.to_thread(lambda: [_load(url, allowed) for url in urls]))
