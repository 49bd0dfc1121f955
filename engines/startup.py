"""An engine's start as people and the supervisor see it: its own log file, and its progress while it loads.

Log file: every log record of the engine process (llmsup's, vLLM's, transformers') is collected into
``<run-dir>/logs/engine-<engine set, else engine id>.log``, in the server's format (text or JSON lines), and
so are those of the processes vLLM starts (EngineCore, workers: they read vLLM's logging config file from the
environment). An engine on another host where that directory cannot be written keeps its records to itself.

Progress: :class:`StartProgress` writes one log line per phase (start, download, load, warm-up, ready) and
publishes it with IPyParallel's data publication, which the supervisor reads from the running ``init_engine``
task (``AsyncResult.data``) to show the phase in its own log and to count its start timeout from the latest
progress. What is published is ``{"progress": {"seq", "phase", "detail", "log_file", "time"}}``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from llmsup.engines.logformat import formatter

log = logging.getLogger("llmsup.engine")
# libraries whose loggers do not propagate to the root logger: the file handler is added to them too
OWN_HANDLER_LOGGERS = ("transformers",)


class EngineLogFile(logging.FileHandler):
    """The engine's log file. It hangs on the root logger and on the loggers in :data:`OWN_HANDLER_LOGGERS`;
    a record that reaches it through both (the library's logger still propagating) is written once."""

    _last: logging.LogRecord | None = None

    def handle(self, record: logging.LogRecord) -> bool:
        if record is self._last:
            return False
        self._last = record
        return super().handle(record)


_handler: EngineLogFile | None = None


def log_path(config: dict[str, Any]) -> str | None:
    """``<log_dir>/engine-<set or id>.log`` (``log_dir``: from the config, else ``<run_dir>/logs``)."""
    log_dir = config.get("log_dir") or (os.path.join(config["run_dir"], "logs") if config.get("run_dir") else None)
    if not log_dir:
        return None
    name = os.environ.get("LLMSUP_ENGINE_SET") or str(config.get("engine_id", os.getpid()))
    return os.path.join(log_dir, f"engine-{name}.log")


def open_log_file(config: dict[str, Any]) -> str:
    """Collect this process's log records into its engine log file; returns the path ("" when none)."""
    global _handler
    path = log_path(config)
    if path is None:
        return ""
    if _handler is not None and _handler.baseFilename == os.path.abspath(path):
        return _handler.baseFilename  # initialised again (after a release): one handler, no doubled lines
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        handler = EngineLogFile(path, encoding="utf-8")
        os.chmod(path, 0o600)  # like every file of the run directory: the owner's only
    except OSError as exc:  # e.g. an engine on a host without the supervisor's run directory
        log.warning("no engine log file %s: %s", path, exc)
        return ""
    level = logging.getLevelName(str(config.get("log_level") or "info").upper())
    handler.setLevel(level if isinstance(level, int) else logging.INFO)
    handler.setFormatter(formatter(str(config.get("log_format") or "text")))
    root = logging.getLogger()
    if _handler is not None:
        _close(_handler)
    root.addHandler(handler)
    for name in OWN_HANDLER_LOGGERS:
        logging.getLogger(name).addHandler(handler)
    if root.level > handler.level:
        root.setLevel(handler.level)
    route_vllm_logs(handler.baseFilename, logging.getLevelName(handler.level), str(config.get("log_format") or "text"))
    logging.captureWarnings(True)
    _handler = handler
    return handler.baseFilename


def route_vllm_logs(path: str, level: str, kind: str) -> None:
    """vLLM configures its own logger (not propagating) when imported, here and in every process it starts: a
    logging config of ours, named by ``VLLM_LOGGING_CONFIG_PATH``, sends its records to the engine's file.
    Left alone when the environment already configures vLLM's logging (a config file, or none at all)."""
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH") or os.environ.get("VLLM_CONFIGURE_LOGGING", "1") == "0":
        return
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"llmsup": {"()": "llmsup.engines.logformat.formatter", "kind": kind}},
        "handlers": {"engine_file": {"class": "logging.FileHandler", "filename": path, "encoding": "utf-8",
                                     "formatter": "llmsup", "level": level}},
        "loggers": {"vllm": {"handlers": ["engine_file"], "level": level, "propagate": False}},
    }
    config_path = f"{path}.vllm-logging.json"
    try:
        descriptor = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as f:
            json.dump(config, f)
    except OSError as exc:  # vLLM then logs to its own stream
        log.warning("vLLM's logs stay on its output: %s", exc)
        return
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = config_path


def _close(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    for name in OWN_HANDLER_LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    handler.close()


class StartProgress:
    """The phases of one engine start: a log line each, published for the supervisor."""

    def __init__(self, log_file: str = "") -> None:
        self.log_file = log_file
        self.seq = 0
        self.started = time.monotonic()

    def report(self, phase: str, detail: str = "") -> None:
        self.seq += 1
        log.info("engine start, %s%s (%.1fs)", phase, f": {detail}" if detail else "", time.monotonic() - self.started)
        publish({"progress": {"seq": self.seq, "phase": phase, "detail": detail, "log_file": self.log_file,
                              "time": time.time()}})


def publish(data: dict[str, Any]) -> None:
    """IPyParallel's ``publish_data`` when running as an engine task; nothing elsewhere (tests, plain Python)."""
    try:
        from ipykernel.zmqshell import ZMQInteractiveShell

        if not ZMQInteractiveShell.initialized() or ZMQInteractiveShell.instance().data_pub is None:
            return
        from ipyparallel.datapub import publish_data

        publish_data(data)
    except (ImportError, AttributeError, RuntimeError, OSError) as exc:  # progress is a courtesy, never fatal
        log.debug("progress not published: %s", exc)
