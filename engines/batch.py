"""The serving loop of a batched engine: many jobs at once, each with its own deadline.

IPyParallel runs one task at a time per engine, in the engine's main thread,
and SIGINT lands in that thread. A batched engine therefore runs ONE
long-lived task, :func:`serve`, in the main thread: it takes requests from the
supervisor over a pyzmq DEALER socket (connected to the supervisor's ROUTER),
steps the backend (continuous batching: a request that arrives joins the
running batch at the next step), streams each request's tokens over the
engine's token stream, and reports each request's end there too.

Deadlines are enforced here first, per request: an overdue request is
aborted inside the backend on its own, its partial output kept, its slot
free at the next step; the others go on untouched. The supervisor's ladder is
the safety net: if a request is not settled shortly after its deadline the
supervisor sends SIGINT; the loop catches ``KeyboardInterrupt``, settles every
request that is due (overdue or on the kill list) and keeps serving.

Messages (JSON on the control socket):
  supervisor -> engine: {"op": "submit", "key", "prompt", "params", "deadline_s"} | {"op": "abort", "key",
                        "reason"} | {"op": "stop"}
  engine -> supervisor: {"op": "hello"} on the control socket when the loop starts; on the token stream:
                        [key, seq, text] pieces; [key, "done", json result]; ["", "beat", json] every BEAT_S
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import zmq
from llmsup.engines import runtime
from llmsup.engines.gpu_memory import gpu_memory_mb
from llmsup.engines.protocol import BatchBackend, GenParams, StepOutput
from llmsup.engines.sigdefer import DeferredSigint

log = logging.getLogger("llmsup.engine")
BEAT_S = 0.25
IDLE_POLL_MS = 20
TEST_HOOK = re.compile(r"\[llmsup:(stall|stall-nosigint)(?:=([0-9.]+))?\]")


@dataclass
class Request:
    key: str
    deadline: float  # this process's monotonic clock
    pieces: list[str] = field(default_factory=list)
    tokens: int = 0
    first_token_s: float | None = None


class BatchServer:
    def __init__(self, config: dict[str, Any]) -> None:
        rt = runtime.current()
        if not isinstance(rt.backend, BatchBackend):
            raise TypeError(f"backend {rt.backend.name!r} cannot batch requests")
        self.backend: BatchBackend = rt.backend
        self.rt = rt
        self.test_hooks = bool(config.get("test_hooks"))
        self.ctl = zmq.Context.instance().socket(zmq.DEALER)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl.setsockopt(zmq.IDENTITY, str(config["identity"]).encode())
        self.ctl.connect(config["control_address"])
        self.requests: dict[str, Request] = {}
        self.kill: dict[str, str] = {}  # key -> reason
        self.stopping = False
        self.interrupts = 0
        self.done = 0
        self._last_beat = 0.0

    # messages out --------------------------------------------------------------------
    def _send(self, frames: list[bytes]) -> None:
        stream = self.rt.stream
        if stream is not None:
            stream.send_raw(frames)

    def _meta(self, kind: str, data: dict[str, Any]) -> None:
        self._send([b"", kind.encode(), json.dumps(data).encode()])

    def _finish(self, req: Request, result: dict[str, Any]) -> None:
        result.setdefault("text", "".join(req.pieces))
        result.setdefault("tokens", req.tokens)
        result.update(pid=os.getpid(), rss_mb=round(runtime.rss_mb(), 1), gpu_mem_mb=gpu_memory_mb(self.rt.gpu))
        self._send([req.key.encode(), b"done", json.dumps(result).encode()])
        self.requests.pop(req.key, None)
        self.kill.pop(req.key, None)
        self.done += 1

    # the loop ------------------------------------------------------------------------
    def serve(self) -> dict[str, Any]:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.ctl.send(json.dumps({"op": "hello", "pid": os.getpid()}).encode())
        while not self.stopping:
            try:
                self._turn()
            except KeyboardInterrupt:
                self.interrupts += 1
                self._settle_due(time.monotonic(), interrupted=True)
        for req in list(self.requests.values()):  # stop: nothing is left without an answer
            self._abort(req, "stopped")
        self.ctl.close(linger=0)
        return {"served": self.done, "interrupts": self.interrupts, "pid": os.getpid()}

    def _turn(self) -> None:
        timeout = 0 if self.requests else IDLE_POLL_MS
        if self.ctl.poll(timeout):
            self._drain()
        now = time.monotonic()
        self._settle_due(now, interrupted=False)
        if self.requests:
            with DeferredSigint():
                outputs = self.backend.step()
            self._apply(outputs)
        if now - self._last_beat >= BEAT_S:
            self._last_beat = now
            self._meta("beat", {"engine_id": self.rt.engine_id, "active": len(self.requests), "done": self.done,
                                "rss_mb": round(runtime.rss_mb(), 1), "gpu_mem_mb": gpu_memory_mb(self.rt.gpu)})

    def _drain(self) -> None:
        while True:
            try:
                raw = self.ctl.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            msg = json.loads(raw)
            op = msg.get("op")
            if op == "submit":
                self._submit(msg)
            elif op == "abort" and msg["key"] in self.requests:
                self.kill[msg["key"]] = msg.get("reason", "cancelled")
            elif op == "stop":
                self.stopping = True

    def _submit(self, msg: dict[str, Any]) -> None:
        key, prompt = msg["key"], msg["prompt"]
        req = Request(key, time.monotonic() + float(msg["deadline_s"]))
        self.requests[key] = req
        try:
            with DeferredSigint():
                self.backend.add_request(key, prompt, GenParams.from_dict(msg.get("params") or {}))
        except Exception as exc:  # a bad request fails alone, as data
            self._finish(req, {"outcome": "error", "error": f"{type(exc).__name__}: {exc}"})
            return
        if self.test_hooks:
            self._test_hook(prompt)

    def _test_hook(self, prompt: str) -> None:
        """Make the loop unresponsive on purpose (tests of the supervisor's SIGINT / SIGKILL steps)."""
        m = TEST_HOOK.search(prompt)
        if not m:
            return
        if m.group(1) == "stall":
            time.sleep(float(m.group(2) or 3600))  # SIGINT ends it (KeyboardInterrupt)
        else:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            time.sleep(10**7)

    def _apply(self, outputs: list[StepOutput]) -> None:
        for out in outputs:
            req = self.requests.get(out.key)
            if req is None:
                continue
            req.tokens += out.new_tokens
            if out.text or out.new_tokens:
                # A step that made tokens but no text yet (the detokenizer holds an incomplete UTF-8 sequence
                # back) still sends a piece, empty: a client sees the request progress from its first token on,
                # as with vLLM's own server (which streams one chunk per step, empty text included).
                self._send([req.key.encode(), str(len(req.pieces)).encode(), out.text.encode()])
                req.pieces.append(out.text)
            if out.finished:
                self._finish(req, {"outcome": "completed", "finish_reason": out.finish_reason,
                                   "prompt_tokens": out.prompt_tokens})

    def _settle_due(self, now: float, interrupted: bool) -> None:
        for req in list(self.requests.values()):
            if req.key in self.kill:
                self._abort(req, self.kill[req.key], interrupted)
            elif now >= req.deadline:
                self._abort(req, "deadline", interrupted)

    def _abort(self, req: Request, reason: str, interrupted: bool = False) -> None:
        with DeferredSigint():
            self.backend.abort_requests([req.key])
        self._finish(req, {"outcome": "interrupted", "reason": reason, "via_sigint": interrupted})


def serve(config: dict[str, Any]) -> dict[str, Any]:
    """The long-lived serving task of a batched engine (returns after a "stop" message)."""
    return BatchServer(config).serve()
