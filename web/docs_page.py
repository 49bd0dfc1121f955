"""``/docs``: the API's operations as one page built here from the OpenAPI spec, with nothing fetched from elsewhere.

FastAPI's Swagger UI and ReDoc pages load their scripts from a CDN: a third party's script in a page of this origin,
where a browser may hold an API key. This page is plain HTML (no script at all), its ``Content-Security-Policy``
forbids loading anything, and it links the machine-readable spec (``/openapi.json``); ``/redoc`` is not served.
"""

from __future__ import annotations

from html import escape
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
METHODS = ("get", "post", "put", "patch", "delete")
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:70em}td{padding:.3em .6em;vertical-align:top}"
         "code{font-weight:bold}tr:nth-child(even){background:#f4f4f4}")


def render(spec: dict[str, Any], spec_url: str) -> str:
    info = spec.get("info", {})
    rows = []
    for path, ops in spec.get("paths", {}).items():
        for method in METHODS:
            op = ops.get(method)
            if op is None:
                continue
            tags = ", ".join(op.get("tags", []))
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>{escape(path)}</code></td>"
                        f"<td>{escape(tags)}</td><td>{escape(op.get('summary', ''))}</td></tr>")
    title = escape(f"{info.get('title', 'API')} {info.get('version', '')}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style></head>"
            f"<body><h1>{title}</h1><p>{escape(info.get('description', ''))}</p>"
            f"<p>The full specification: <a href='{escape(spec_url)}'>{escape(spec_url)}</a> (OpenAPI 3, JSON).</p>"
            "<table><tr><th>method</th><th>path</th><th>tags</th><th>summary</th></tr>"
            + "".join(rows) + "</table></body></html>")


def install(app: FastAPI, root_path: str = "") -> None:
    spec_url = root_path.rstrip("/") + "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(render(app.openapi(), spec_url), headers={"Content-Security-Policy": POLICY})
