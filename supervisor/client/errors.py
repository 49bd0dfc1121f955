"""The client's errors: one exception class per kind of answer, carrying the server's message and HTTP status."""

from __future__ import annotations

from typing import Any

import httpx


class LlmsupError(Exception):
    """An error from the llmsup server (``status_code`` set) or from talking to it."""

    def __init__(self, message: str, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status_code})" if self.status_code else self.message


class ServerUnreachable(LlmsupError):
    """No answer from the server (not started, wrong URL, network)."""


class InvalidRequest(LlmsupError, ValueError):
    """The server refused the request's content (HTTP 400 / 422)."""


class NotFound(LlmsupError, LookupError):
    """No such job or engine (HTTP 404)."""


class Conflict(LlmsupError):
    """The request does not fit the job's current state (HTTP 409)."""


class AuthError(LlmsupError, PermissionError):
    """Admin routes need the admin token (LLMSUP_ADMIN_TOKEN or <run-dir>/admin_token)."""


class QueueFull(LlmsupError):
    """The queue is at its bound (HTTP 429); try again after ``retry_after`` seconds."""

    def __init__(self, message: str, status_code: int | None = 429, detail: Any = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, status_code, detail)
        self.retry_after = retry_after


class JobTimeout(LlmsupError, TimeoutError):
    """A wait ran out before the job reached a terminal status (the job itself goes on)."""


class JobFailed(LlmsupError):
    """``wait(check=True)``: the job ended in a status other than ``succeeded``."""

    def __init__(self, message: str, job: dict[str, Any]) -> None:
        super().__init__(message)
        self.job = job


class BorrowError(LlmsupError):
    """An engine could not be borrowed, or could not be handed back."""


_BY_STATUS: dict[int, type[LlmsupError]] = {400: InvalidRequest, 401: AuthError, 403: AuthError, 404: NotFound,
                                            409: Conflict, 422: InvalidRequest}


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _is_admin_route(resp: httpx.Response) -> bool:
    try:
        return resp.request.url.path.startswith("/admin")
    except RuntimeError:  # a response built without its request
        return False


def error_from(resp: httpx.Response) -> LlmsupError:
    """The exception for an error answer, carrying the server's message and status code."""
    detail: Any = None
    try:
        body = resp.json()
        message = body.get("error") or body.get("detail") or resp.text if isinstance(body, dict) else resp.text
        detail = body.get("detail") if isinstance(body, dict) else body
    except ValueError:
        message = resp.text or resp.reason_phrase
    message = str(message) or f"HTTP {resp.status_code}"
    if resp.status_code == 429:
        return QueueFull(message, 429, detail, retry_after=_retry_after(resp))
    if resp.status_code in (401, 403):
        if _is_admin_route(resp):
            message += " (admin token: Client(admin_token=...), LLMSUP_ADMIN_TOKEN, or <run-dir>/admin_token)"
        else:
            message += " (API key: Client(api_key=...), LLMSUP_API_KEY, or <run-dir>/api_key)"
    return _BY_STATUS.get(resp.status_code, LlmsupError)(message, resp.status_code, detail)


def checked(resp: httpx.Response) -> Any:
    """The answer's JSON, or the error it carries raised."""
    if resp.status_code >= 400:
        raise error_from(resp)
    return resp.json()
