"""vLLM's API server flags, same names and meanings: CORS, TLS, root path, uvicorn's logs, request ids, request
logging, the FastAPI docs (the rest of vLLM's flags: supervisor/cli/vllm_flags.py). :class:`FrontendFields` is a
base of :class:`~llmsup.supervisor.settings.Settings`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode

from llmsup.supervisor.settings_meta import FRONTEND, cli, split_list


class FrontendFields(BaseSettings):
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CORS: origins a browser page may call from, as a JSON list (vLLM's "
        "form, e.g. '[\"*\"]') or comma-separated; none: no CORS headers", json_schema_extra=cli(FRONTEND),
    )
    allowed_methods: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], description="CORS: methods allowed (with allowed_origins)",
        json_schema_extra=cli(FRONTEND),
    )
    allowed_headers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], description="CORS: request headers allowed (with allowed_origins)",
        json_schema_extra=cli(FRONTEND),
    )
    allow_credentials: bool = Field(False, description="CORS: allow credentials (with allowed_origins)",
                                    json_schema_extra=cli(FRONTEND))
    ssl_keyfile: Path | None = Field(None, description="TLS: the private key file (with ssl_certfile: HTTPS)",
                                     json_schema_extra=cli(FRONTEND))
    ssl_certfile: Path | None = Field(None, description="TLS: the certificate file", json_schema_extra=cli(FRONTEND))
    ssl_ca_certs: Path | None = Field(None, description="TLS: CA certificates to verify clients with",
                                      json_schema_extra=cli(FRONTEND))
    ssl_cert_reqs: int = Field(0, ge=0, le=2, description="TLS: client certificates (0 none, 1 optional, 2 required; "
                               "Python's ssl.CERT_*)", json_schema_extra=cli(FRONTEND))
    root_path: str = Field("", description="path prefix the server is reached under behind a proxy (ASGI root_path)",
                           json_schema_extra=cli(FRONTEND))
    uvicorn_log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] | None = Field(
        None, description="uvicorn's log level; default: log_level", json_schema_extra=cli(FRONTEND),
    )
    disable_uvicorn_access_log: bool = Field(False, description="no access log line per HTTP request",
                                             json_schema_extra=cli(FRONTEND))
    enable_request_id_headers: bool = Field(
        False, description="answers carry X-Request-Id (the request's own, else a new one)",
        json_schema_extra=cli(FRONTEND),
    )
    enable_log_requests: bool = Field(
        False, description="log each job's prompt and sampling parameters when it is submitted (off: only its id, "
        "deadline and size)",
        json_schema_extra=cli(FRONTEND, "--enable-log-requests/--disable-log-requests", " /--no-enable-log-requests"),
    )
    max_log_len: int | None = Field(None, ge=0, description="characters of a prompt logged by enable_log_requests "
                                    "(default: all)", json_schema_extra=cli(FRONTEND))
    disable_fastapi_docs: bool = Field(False, description="no /docs (a plain page of the operations, nothing loaded "
                                       "from elsewhere) nor /openapi.json",
                                       json_schema_extra=cli(FRONTEND))

    @field_validator("allowed_origins", "allowed_methods", "allowed_headers", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return split_list(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_tls(self) -> "FrontendFields":
        if (self.ssl_keyfile is None) != (self.ssl_certfile is None):
            raise ValueError("TLS needs both ssl_keyfile and ssl_certfile")
        return self
