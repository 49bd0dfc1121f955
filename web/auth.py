"""Who is calling: the admin bearer token and the API keys of job routes.

- Admin routes always need ``Authorization: Bearer <admin token>``: missing -> 401, wrong -> 403. The token comes
  from ``LLMSUP_ADMIN_TOKEN``; without it a new one is generated at every start and written to
  ``<run-dir>/admin_token`` (mode 0600), whose path is logged.
- Job routes (native and OpenAI) need an API key when keys are required: ``require_api_keys=on``, or ``auto``
  and the server is bound to a non-loopback address. Keys come from ``LLMSUP_API_KEYS`` / ``api_keys_file``
  (``key`` or ``owner:key``); if keys are required and none are configured, one is generated into
  ``<run-dir>/api_key``. A key user sees and cancels only their own jobs; the admin token works as a key that
  sees every job.

Every comparison is constant-time (``hmac.compare_digest`` over SHA-256 digests, all keys compared).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from supervisor.jobs import Job
from supervisor.requests import JobNotFound
from supervisor.settings import Settings

log = logging.getLogger("llmsup.web.auth")
BEARER = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Principal:
    """The caller of a job route. ``owner`` None with ``admin`` or keys off: sees every job."""

    owner: str | None
    admin: bool = False

    @property
    def sees_all(self) -> bool:
        return self.owner is None

    def can_see(self, job: Job) -> bool:
        return self.sees_all or job.owner == self.owner

    def scoped_key(self, idempotency_key: str | None) -> str | None:
        """Idempotency keys are per owner, so one user's key never returns another user's job."""
        if idempotency_key is None or self.owner is None:
            return idempotency_key
        return f"{self.owner}/{idempotency_key}"

    def unscoped_key(self, stored: str | None) -> str | None:
        if stored is None or self.owner is None:
            return stored
        return stored.removeprefix(f"{self.owner}/")


ANONYMOUS = Principal(owner=None)
ADMIN = Principal(owner=None, admin=True)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def write_secret(path: Path, value: str) -> None:
    """Write a secret readable by its owner only (0600 from creation, also when the file existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (value + "\n").encode())
    finally:
        os.close(fd)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_keys(text: str) -> dict[str, str]:
    """``key`` or ``owner:key`` items (commas or new lines) -> {key: owner}."""
    keys: dict[str, str] = {}
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        owner, sep, key = item.partition(":")
        if not sep:
            owner, key = "key-" + hashlib.sha256(item.encode()).hexdigest()[:8], item
        if not key.strip():
            raise ValueError(f"empty API key for owner {owner!r}")
        keys[key.strip()] = owner.strip()
    return keys


class Auth:
    def __init__(self, admin_token: str, keys: dict[str, str], keys_required: bool) -> None:
        self._admin = _digest(admin_token)
        self._keys = [(_digest(k), owner) for k, owner in keys.items()]
        self.keys_required = keys_required

    @classmethod
    def from_settings(cls, settings: Settings) -> "Auth":
        run_dir = settings.run_dir
        if settings.admin_token is not None and settings.admin_token.get_secret_value():
            admin = settings.admin_token.get_secret_value()
        else:
            admin = secrets.token_urlsafe(32)
            path = run_dir / "admin_token"
            write_secret(path, admin)
            log.warning("admin token written to %s (mode 0600)", path.resolve())
            print(f"llmsup: admin token written to {path.resolve()}", flush=True)
        keys: dict[str, str] = {}
        if settings.api_keys is not None:
            keys.update(parse_keys(settings.api_keys.get_secret_value()))
        if settings.api_keys_file is not None:
            keys.update(parse_keys(settings.api_keys_file.read_text()))
        mode = settings.require_api_keys
        required = mode == "on" or (mode == "auto" and not is_loopback(settings.host))
        if required and not keys:
            key = "sk-llmsup-" + secrets.token_urlsafe(24)
            path = run_dir / "api_key"
            write_secret(path, key)
            keys[key] = "default"
            log.warning("API keys required but none configured: one written to %s (mode 0600)", path.resolve())
        if required:
            log.info("job routes need an API key (%d configured)", len(keys))
        return cls(admin, keys, required)

    def is_admin(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(_digest(token), self._admin)

    def owner_of(self, token: str | None) -> str | None:
        """The owner of an API key, or None; compares against every key so timing tells nothing."""
        if token is None:
            return None
        digest = _digest(token)
        found = None
        for key_digest, owner in self._keys:
            if hmac.compare_digest(digest, key_digest):
                found = owner
        return found


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def get_auth(request: Request) -> Auth:
    return request.app.state.auth


def require_admin(request: Request) -> Principal:
    token = bearer(request)
    if token is None:
        raise HTTPException(401, "admin token required (Authorization: Bearer <token>)", headers=BEARER)
    if not get_auth(request).is_admin(token):
        raise HTTPException(403, "invalid admin token")
    return ADMIN


def job_principal(request: Request) -> Principal:
    auth = get_auth(request)
    token = bearer(request)
    if auth.is_admin(token):
        return ADMIN
    if not auth.keys_required:
        return ANONYMOUS
    if token is None:
        raise HTTPException(401, "API key required (Authorization: Bearer <key>)", headers=BEARER)
    owner = auth.owner_of(token)
    if owner is None:
        raise HTTPException(401, "invalid API key", headers=BEARER)
    return Principal(owner=owner)


def visible(job: Job, principal: Principal) -> Job:
    """The job if the caller may see it; otherwise 'not found' (no hint that it exists)."""
    if not principal.can_see(job):
        raise JobNotFound(job.id)
    return job


AdminDep = Annotated[Principal, Depends(require_admin)]
PrincipalDep = Annotated[Principal, Depends(job_principal)]
