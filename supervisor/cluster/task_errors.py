"""IPyParallel's exceptions for a job's task, decoded into the core's :class:`~llmsup.supervisor.core.reports.TaskFailure`.

The core never sees an exception object from the cluster: what it decides on (interrupted, the engine died, the task
raised) arrives as data.
"""

from __future__ import annotations

from ipyparallel import error as ipp_error

from llmsup.supervisor.core.reports import TaskFailure


def task_failure(exc: BaseException) -> TaskFailure:
    """What a failed ``apply`` of ``run_job`` means for the job."""
    ename = getattr(exc, "ename", type(exc).__name__)
    if ename == "KeyboardInterrupt":
        return TaskFailure("interrupted", "interrupted")
    if ename == "EngineError" or isinstance(exc, ipp_error.EngineError):
        return TaskFailure("engine_died", str(exc))
    remote_traceback = getattr(exc, "traceback", None)  # a RemoteError carries the engine's own
    return TaskFailure("raised", f"{ename}: {exc}", remote_traceback if isinstance(remote_traceback, str) else None)
