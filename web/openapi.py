"""The served OpenAPI spec states this server's own limits (from its settings), not only the code's.

Request schemas carry static bounds; ``prompt``, ``max_tokens`` and deadlines are bounded by settings
(``max_prompt_chars``, ``max_tokens_limit``, ``max_deadline_s``), so clients and fuzzers see the real ranges
(a prompt of token ids, and ``/detokenize``'s tokens, may have as many ids as a prompt may have characters).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from llmsup.supervisor.settings import Settings

REQUESTS = ("JobCreate", "CompletionRequest", "ChatCompletionRequest", "TokenizeRequest", "DetokenizeRequest")


def limits(settings: Settings) -> dict[str, dict[str, Any]]:
    deadline = {"maximum": settings.max_deadline_s}
    tokens = {"maximum": settings.max_tokens_limit}
    return {
        "max_tokens": tokens, "max_completion_tokens": tokens, "deadline_s": deadline, "timeout": deadline,
        "prompt": {"maxLength": settings.max_prompt_chars, "maxItems": settings.max_prompt_chars},
        "tokens": {"maxItems": settings.max_prompt_chars},  # /detokenize
    }


def _tighten(schema: dict[str, Any], bounds: dict[str, Any]) -> None:
    """Apply bounds to every branch of ``schema`` that can carry them (numbers, strings, lists of strings)."""
    for branch in schema.get("anyOf", [schema]):
        kind = branch.get("type")
        if kind in ("number", "integer") and "maximum" in bounds:
            branch["maximum"] = min(branch.get("maximum", bounds["maximum"]), bounds["maximum"])
            branch.pop("exclusiveMaximum", None)
        elif kind == "string" and "maxLength" in bounds:
            branch["maxLength"] = bounds["maxLength"]
        elif kind == "array" and "items" in branch:
            if "maxItems" in bounds:  # token ids: as many as the prompt may have characters
                branch["maxItems"] = min(branch.get("maxItems", bounds["maxItems"]), bounds["maxItems"])
            _tighten(branch["items"], bounds)


def install(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = spec.get("components", {}).get("schemas", {})
            for name in REQUESTS:
                for prop, bounds in limits(settings).items():
                    field = schemas.get(name, {}).get("properties", {}).get(prop)
                    if field is not None:
                        _tighten(field, bounds)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
