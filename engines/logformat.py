"""Log line formats shared by the supervisor and the engines: text, or one JSON object per line.

JSON lines carry the record's ``extra`` fields as keys (the supervisor logs job events with ``job_id``,
``engine``, ``host``, ``pid``, ``gpu``), and the same keys read from ``job=... engine=... host=... pid=... gpu=...``
tags in the message, so lines that only tag their text are searchable by job and engine too.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_TAG = re.compile(r"(?<![\w.-])(job|engine|host|pid|gpu)=([^\s;()]+)")
_TAG_KEYS = {"job": "job_id"}
_NUMERIC_TAGS = ("engine", "pid")
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message"}  # uvicorn's message with terminal colours: not for JSON


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, tags and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for tag, value in _TAG.findall(message):
            value = value.rstrip(",.:")
            data.setdefault(_TAG_KEYS.get(tag, tag), int(value) if tag in _NUMERIC_TAGS and value.isdigit() else value)
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc_info"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str)


def formatter(kind: str) -> logging.Formatter:
    """``"json"``: :class:`JsonFormatter`; anything else: the text format."""
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT)
