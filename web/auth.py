"""Who is calling: the admin bearer token and the API keys of job routes.

- Admin routes always need ``Authorization: Bearer <admin token>``: missing -> 401, wrong -> 403. The token comes
  from ``admin_token_file`` or ``LLMSUP_ADMIN_TOKEN``; without it a new one is generated at every start and written
  to ``<run-dir>/admin_token`` (mode 0600), whose path is logged.
- Every route but the keyless ones (``/health``, ``/ping``, ``/version``, ``/healthz``, ``/readyz``, the dashboard's
  files, and ``/metrics`` with ``metrics_open``) needs an API key, on every bind, loopback too, unless
  ``require_api_keys=off`` (vLLM's open mode). Keys come from ``--api-key`` / ``LLMSUP_API_KEYS``, ``VLLM_API_KEY``
  and ``api_keys_file`` (``key`` or ``owner:key``); with none given, one is generated into ``<run-dir>/api_key``
  (0600; kept across restarts, so a notebook's client keeps working), where the CLI and the Python client find it.
  A secret file must be readable by its owner only, and every key and token given at least ``min_key_length``
  characters long: otherwise :class:`SecretError` (``llmsup serve`` says why and does not start).
  A key user sees and cancels only their own jobs; the admin token works as a key that sees every job. Owner names
  are checked (``supervisor/core/requests.py: check_owner_name``) when keys are read. With keys off, every caller's
  jobs belong to one owner, ``keyless``: one queue quota and one fair share for all of them.
- Idempotency keys are per owner in the store itself (``supervisor/store/sqlite.py``), so no owner can reach
  another owner's job through a key; jobs without an owner (the admin's, keys off) are one owner of their own.

Every comparison is constant-time (``hmac.compare_digest`` over SHA-256 digests, all keys compared). A wrong key or
token slows its address's next attempts (``web/auth_backoff.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from llmsup.supervisor.core.jobs import Job
from llmsup.supervisor.core.requests import InvalidRequest, JobNotFound, check_owner_name
from llmsup.supervisor.rundir import prepare_run_dir, write_private
from llmsup.supervisor.settings import Settings
from llmsup.web.auth_backoff import FailedAuth

log = logging.getLogger("llmsup.web.auth")
BEARER = {"WWW-Authenticate": "Bearer"}


KEYLESS = "keyless"  # the owner of the jobs callers without a key submit (require_api_keys=off)


@dataclass(frozen=True)
class Principal:
    """The caller of a job route. ``owner`` None with ``admin`` or keys off: sees every job."""

    owner: str | None
    admin: bool = False

    @property
    def job_owner(self) -> str | None:
        """The owner of the jobs it submits: its key's owner; callers without a key (keys off) are all one owner,
        :data:`KEYLESS`, with that owner's queue quota and fair share; the admin none (exempt from quotas)."""
        return KEYLESS if self.owner is None and not self.admin else self.owner

    @property
    def sees_all(self) -> bool:
        return self.owner is None

    def can_see(self, job: Job) -> bool:
        return self.sees_all or job.owner == self.owner


ANONYMOUS = Principal(owner=None)
ADMIN = Principal(owner=None, admin=True)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def write_secret(path: Path, value: str) -> None:
    """Write a secret readable by its owner only: 0600 from creation, never through a symlink at ``path``, in a
    private directory (created 0700 if missing)."""
    prepare_run_dir(path.parent)
    write_private(path, value + "\n")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SecretError(ValueError):
    """A secret given cannot be used: the message says which and why."""


def read_secret_file(path: Path, what: str) -> str:
    """The text of a secret file: a regular file that neither group nor others may read."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"{what} {path} is not a regular file")
        if info.st_mode & 0o077:
            raise SecretError(f"{what} {path} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}): "
                              f"run `chmod 600 {path}`")
        return path.read_text()
    except OSError as exc:
        raise SecretError(f"{what} {path}: {exc.strerror}") from None


def check_length(secret: str, what: str, settings: Settings) -> str:
    """The secret, if at least ``min_key_length`` long; a shorter one is accepted on a loopback bind only (a
    ``vllm serve --api-key sk-x`` line runs unchanged there), with a warning."""
    minimum = settings.min_key_length
    if len(secret) >= minimum:
        return secret
    if is_loopback(settings.host):
        log.warning("%s is %d characters long (min_key_length %d): accepted because the server binds %s only",
                    what, len(secret), minimum, settings.host)
        return secret
    raise SecretError(f"{what} is {len(secret)} characters long: at least {minimum} needed (min_key_length) when "
                      f"the server binds {settings.host}; "
                      "e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'")


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
        try:
            keys[key.strip()] = check_owner_name(owner.strip())
        except InvalidRequest as exc:
            raise ValueError(f"API keys: {exc}") from None
    return keys


def configured_keys(settings: Settings) -> dict[str, str]:
    """The API keys given: ``api_keys`` (``--api-key``, ``LLMSUP_API_KEYS``), else ``VLLM_API_KEY`` as vLLM reads it,
    and the keys file's."""
    keys: dict[str, str] = {}
    if settings.api_keys is not None and settings.api_keys.get_secret_value():
        keys.update(parse_keys(settings.api_keys.get_secret_value()))
    elif os.environ.get("VLLM_API_KEY"):
        keys.update(parse_keys(os.environ["VLLM_API_KEY"]))
    if settings.api_keys_file is not None:
        keys.update(parse_keys(read_secret_file(settings.api_keys_file, "api_keys_file")))
    for key, owner in keys.items():
        check_length(key, f"the API key of {owner!r}", settings)
    return keys


def configured_admin_token(settings: Settings) -> str | None:
    """The admin token given (``admin_token_file``, ``admin_token``), or None."""
    if settings.admin_token_file is not None:
        token = read_secret_file(settings.admin_token_file, "admin_token_file").strip()
    elif settings.admin_token is not None:
        token = settings.admin_token.get_secret_value()
    else:
        return None
    return check_length(token, "the admin token", settings) if token else None


def check_secrets(settings: Settings) -> None:
    """Read every secret given, as the app will at start: :class:`SecretError` (or ValueError) if one is unusable."""
    configured_admin_token(settings)
    configured_keys(settings)


def generated_key(path: Path) -> str:
    """The key of ``<run-dir>/api_key``: the one an earlier run wrote (0600 in a private directory: ours), else a new
    one written there."""
    try:
        key = path.read_text().strip() if not path.is_symlink() else ""
    except OSError:
        key = ""
    if not key.startswith("sk-llmsup-"):
        key = "sk-llmsup-" + secrets.token_urlsafe(24)
        write_secret(path, key)
        log.warning("API key written to %s (mode 0600): clients on this machine read it from there", path.resolve())
    return key


class Auth:
    def __init__(self, admin_token: str, keys: dict[str, str], keys_required: bool, key_file: Path | None = None,
                 failed: FailedAuth | None = None) -> None:
        self.failed = failed if failed is not None else FailedAuth(0.0)
        self._admin = _digest(admin_token)
        self._keys = [(_digest(k), owner) for k, owner in keys.items()]
        self.keys_required = keys_required
        self.key_file = key_file  # where the generated key is (None: keys were given, or none are required)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Auth":
        given = configured_admin_token(settings)
        if given is not None:
            admin = given
            settings.admin_token_path.unlink(missing_ok=True)  # a token generated by an earlier run is void
        else:
            admin = secrets.token_urlsafe(32)
            path = settings.admin_token_path
            write_secret(path, admin)
            log.warning("admin token written to %s (mode 0600)", path.resolve())
            print(f"llmsup: admin token written to {path.resolve()}", flush=True)
        keys = configured_keys(settings)
        required = settings.require_api_keys != "off"
        key_file = None
        if required and not keys:
            keys[generated_key(settings.api_key_path)] = "default"
            key_file = settings.api_key_path.resolve()
        elif settings.api_key_path.exists():
            settings.api_key_path.unlink()  # a key generated by an earlier run is void: clients must not send it
        if required:
            log.info("every route but health, version and the dashboard needs an API key (%d configured)", len(keys))
        else:
            log.warning("API keys off (require_api_keys=off): anyone who reaches %s:%s may submit jobs",
                        settings.host, settings.port)
        return cls(admin, keys, required, key_file, FailedAuth(settings.auth_backoff_s))

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
    auth: Auth = request.app.state.auth
    return auth


def _address(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def _failed(request: Request, auth: Auth) -> None:
    auth.failed.failed(_address(request), auth.failed.clock())


async def require_admin(request: Request) -> Principal:  # async: FastAPI runs sync ones in threads
    token = bearer(request)
    if token is None:
        raise HTTPException(401, "admin token required (Authorization: Bearer <token>)", headers=BEARER)
    auth = get_auth(request)
    await auth.failed.gate(_address(request))  # no await between here and the check: one check per slot
    if not auth.is_admin(token):
        _failed(request, auth)
        raise HTTPException(403, "invalid admin token")
    return ADMIN


async def job_principal(request: Request) -> Principal:
    auth = get_auth(request)
    token = bearer(request)
    if token is not None:
        await auth.failed.gate(_address(request))
    if auth.is_admin(token):
        return ADMIN
    if not auth.keys_required:
        return ANONYMOUS
    if token is None:
        raise HTTPException(401, "API key required (Authorization: Bearer <key>)", headers=BEARER)
    owner = auth.owner_of(token)
    if owner is None:
        _failed(request, auth)
        raise HTTPException(401, "invalid API key", headers=BEARER)
    return Principal(owner=owner)


def visible(job: Job, principal: Principal) -> Job:
    """The job if the caller may see it; otherwise 'not found' (no hint that it exists)."""
    if not principal.can_see(job):
        raise JobNotFound(job.id)
    return job


AdminDep = Annotated[Principal, Depends(require_admin)]
PrincipalDep = Annotated[Principal, Depends(job_principal)]
