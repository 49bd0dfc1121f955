"""The Python client of a running ``llmsup serve``: async-first (``asynchronous``), a blocking twin (``sync``), its
errors, the job event stream, live progress bars, and joining the server's IPyParallel cluster from a notebook.

May import: nothing else of llmsup's but the run directory's names (``llmsup.supervisor.runfiles``, which imports
nothing): the client talks to the server over HTTP only, so it may run anywhere.
Public paths: ``from llmsup.supervisor.client import Client, AsyncClient, ...`` (the names below).
"""

from llmsup.supervisor.client.sync import (
    AsyncClient,
    AsyncJobHandle,
    AuthError,
    BorrowError,
    Client,
    Conflict,
    InvalidRequest,
    JobFailed,
    JobHandle,
    JobTimeout,
    LlmsupError,
    NotFound,
    QueueFull,
    ServerUnreachable,
    wait_all,
)

__all__ = [
    "AsyncClient", "AsyncJobHandle", "AuthError", "BorrowError", "Client", "Conflict", "InvalidRequest", "JobFailed",
    "JobHandle", "JobTimeout", "LlmsupError", "NotFound", "QueueFull", "ServerUnreachable", "wait_all",
]
