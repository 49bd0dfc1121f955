"""Settings of the secrets the web app checks: where the admin token and the API keys come from, how long a key must
be, and the back-off after a failed authentication. :class:`SecretSettings` is a base of
:class:`~llmsup.supervisor.settings.Settings` (each field is a flag, a variable and a key like any other).

A secret given on the command line shows in ``ps`` to every local user: the files (``--admin-token-file``,
``--api-keys-file``, each readable by its owner only) or the environment are the ways to prefer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings

from llmsup.supervisor.settings_meta import SECURITY, cli


class SecretSettings(BaseSettings):
    admin_token: SecretStr | None = Field(
        None, description="admin bearer token (shows in ps: prefer admin_token_file or LLMSUP_ADMIN_TOKEN); unset: "
        "a new one is generated at start into <run-dir>/admin_token",
        json_schema_extra=cli(SECURITY),
    )
    admin_token_file: Path | None = Field(
        None, description="file holding the admin bearer token (readable by its owner only)",
        json_schema_extra=cli(SECURITY),
    )
    api_keys: SecretStr | None = Field(
        None, description="API keys, comma-separated 'key' or 'owner:key' (also read from VLLM_API_KEY; shows in ps: "
        "prefer api_keys_file)",
        json_schema_extra=cli(SECURITY, "--api-key"),
    )
    api_keys_file: Path | None = Field(None, description="file of API keys, one 'key' or 'owner:key' a line "
                                       "(readable by its owner only)", json_schema_extra=cli(SECURITY))
    require_api_keys: Literal["auto", "on", "off"] = Field(
        "auto", description="every route but health, version and the dashboard needs an API key, on any bind: the "
        "keys given, else (auto, on) one generated into <run-dir>/api_key; off: no key (vLLM's open mode; the Host "
        "header is then checked against allowed_hosts)",
        json_schema_extra=cli(SECURITY),
    )
    min_key_length: int = Field(
        16, ge=1, le=256, description="shortest API key or admin token accepted beyond loopback (a shorter "
        "one given: the server refuses to start; on a loopback bind it is accepted with a warning)",
        json_schema_extra=cli(SECURITY),
    )
    auth_backoff_s: float = Field(
        0.5, ge=0, le=10, description="after a failed authentication, the next attempt from the same client address "
        "waits this long, doubling with each further failure up to 10 s; forgotten after a minute without one (0: off)",
        json_schema_extra=cli(SECURITY),
    )

    @model_validator(mode="after")
    def _one_admin_token(self) -> "SecretSettings":
        if self.admin_token is not None and self.admin_token_file is not None:
            raise ValueError("give the admin token once: admin_token or admin_token_file")
        return self
