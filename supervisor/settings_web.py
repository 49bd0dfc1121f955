"""Settings of the web server: its bind, run directory and logs, API keys and the admin token, Host checks, request
limits and per-owner quotas. :class:`WebFields` is a base of :class:`~llmsup.supervisor.settings.Settings`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode

from llmsup.supervisor import runfiles
from llmsup.supervisor.settings_meta import ENGINES, MODEL, SECURITY, SERVER, cli, split_list

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class WebFields(BaseSettings):
    # web
    host: str = Field("127.0.0.1", description="address the web app binds", json_schema_extra=cli(SERVER))
    port: int = Field(8000, ge=0, le=65535, description="port of the web app", json_schema_extra=cli(SERVER))
    run_dir: Path = Field(Path(runfiles.DEFAULT_RUN_DIR), description="SQLite store, IPyParallel files, caches, tokens, logs",
                          json_schema_extra=cli(SERVER))
    stream_bind: str = Field("tcp://127.0.0.1", description="where engines send tokens (an address engines reach); "
                             "with a cluster_ip other than loopback, that address",
                             json_schema_extra=cli(ENGINES))
    log_level: LogLevel = Field("info", description="logging level of the server (engine log files too)",
                                json_schema_extra=cli(SERVER))
    log_format: Literal["text", "json"] = Field(
        "text", description="text lines, or one JSON object per line (job_id, engine, host, pid, gpu as keys)",
        json_schema_extra=cli(SERVER),
    )
    # web: security and limits
    max_body_bytes: int = Field(2_000_000, ge=1024, description="request bodies above this get 413",
                                json_schema_extra=cli(SERVER))
    cancel_on_disconnect: bool = Field(True, description="OpenAI routes: a client that goes away cancels its job",
                                       json_schema_extra=cli(SERVER))
    served_model_name: str | None = Field(None, description="model name(s) on the OpenAI routes, comma-separated "
                                          "aliases (default: model/backend)", json_schema_extra=cli(MODEL))
    sse_ping_s: float = Field(15.0, gt=0, le=300, description="keep-alive comment interval of SSE streams",
                              json_schema_extra=cli(SERVER))
    # web: safe by default on loopback
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header names accepted besides localhost names and the bound address (comma-separated; "
        "'*': any). Other names get 400 (DNS rebinding)",
        json_schema_extra=cli(SECURITY),
    )
    metrics_open: bool = Field(False, description="/metrics answers without an API key even when keys are on",
                               json_schema_extra=cli(SECURITY, "--metrics-open/--metrics-need-key"))
    http_limit_concurrency: int = Field(
        1000, ge=1, le=1_000_000, description="connections + requests at once before uvicorn answers 503",
        json_schema_extra=cli(SERVER),
    )
    http_backlog: int = Field(2048, ge=1, le=65_535, description="TCP listen backlog of the web server",
                              json_schema_extra=cli(SERVER))
    # quotas per owner (an API key's owner; keys off: every caller together is one owner, 'keyless')
    owner_queue_max: int = Field(
        1000, ge=0, description="queued jobs per owner before 429: an API key's owner; with keys off, every caller "
        "together as one owner (0: no limit; the admin is exempt)",
        json_schema_extra=cli(SECURITY),
    )
    max_user_priority: int = Field(
        100, ge=-1000, le=1000, description="highest priority a caller without the admin token may ask (above: 403)",
        json_schema_extra=cli(SECURITY),
    )
    sse_max_per_owner: int = Field(32, ge=1, description="open event streams per owner (the admin: no own limit)",
                                   json_schema_extra=cli(SECURITY))
    sse_max_total: int = Field(512, ge=1, description="open event streams in all", json_schema_extra=cli(SERVER))

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_allowed_hosts(cls, value: Any) -> Any:
        return split_list(value) if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @property
    def db_path(self) -> Path:
        return self.run_dir / runfiles.JOB_STORE

    @property
    def ipython_dir(self) -> Path:
        return self.run_dir / runfiles.IPYTHON_DIR

    @property
    def log_dir(self) -> Path:
        return self.run_dir / runfiles.LOG_DIR

    # files in the run directory (all 0600, the directory 0700: supervisor/rundir.py)
    @property
    def admin_token_path(self) -> Path:
        return self.run_dir / runfiles.ADMIN_TOKEN

    @property
    def api_key_path(self) -> Path:
        return self.run_dir / runfiles.API_KEY

    @property
    def server_file(self) -> Path:
        return self.run_dir / runfiles.SERVER_FILE

    @property
    def ledger_path(self) -> Path:
        return self.run_dir / runfiles.PROCESSES
