"""The backend's key lines of an engine's start, shown in ``llmsup serve``'s own output as ``vllm serve`` shows them.

Each engine writes its whole start to its own log file (``<run-dir>/logs/engine-*.log``); while the server starts,
:func:`follow` reads what the engines on this host added to theirs and logs the lines a vLLM user looks for (the
arguments vLLM took, weights loaded, KV cache size, maximum concurrency, warm-up and graph capture, load times) and
any warning or error, each tagged with its engine. llmsup's own progress lines are left out: the supervisor logs
those already.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from llmsup.supervisor.service import Supervisor

log = logging.getLogger("llmsup.engines")
KEY_LINES = re.compile(
    r"non-default args|Loading weights took|Model loading took|KV cache size|Maximum concurrency|Graph capturing|"
    r"init engine|torch\.compile takes|Memory profiling|model weights took|vllm: loaded|transformers: loaded|"
    r"\b(?:WARNING|ERROR|CRITICAL)\b"
)
NOISE = re.compile(r"Triton|llmsup\.engine: engine start|global random seed|set_num_threads")
RECORD = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+): (?P<text>.*)$")
MAX_CHARS = 400
READ_BYTES = 1 << 20


def key_line(line: str) -> str | None:
    """The line as shown (level, logger, text), or None when it is not a key line."""
    if not KEY_LINES.search(line) or NOISE.search(line):
        return None
    match = RECORD.match(line.strip())
    text = f"{match['level']} {match['logger']}: {match['text']}" if match else line.strip()
    return text[:MAX_CHARS] + ("…" if len(text) > MAX_CHARS else "")


class LogFollower:
    """New lines of engines' log files, read from where the last read stopped."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}

    def read(self, tag: str, path: str) -> list[str]:
        try:
            with open(path, "rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read(READ_BYTES)
        except OSError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offsets[path] = self.offsets.get(path, 0) + end
        shown = [key_line(line) for line in data[:end].decode(errors="replace").splitlines()]
        return [f"engine {tag}: {line}" for line in shown if line]


async def follow(sup: Supervisor, done: asyncio.Event, period_s: float = 0.5) -> None:
    """Log the key lines of every local engine's log file until ``done`` (the start ended), and once more then."""
    follower = LogFollower()
    while True:
        for engine in list(sup.pool):
            if engine.log_file and Path(engine.log_file).is_file():
                for line in follower.read(str(engine.id), engine.log_file):
                    log.info("%s", line)
        if done.is_set():
            return
        try:
            await asyncio.wait_for(done.wait(), period_s)
        except TimeoutError:
            pass
