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

Messages (``engines/messages.py``):
  supervisor -> engine, control socket: Submit | Abort | Stop, one a frame, a message of one or more frames
                        (a frame the loop cannot read is dropped, counted, and logged once per kind of problem; the
                        loop goes on)
  engine -> supervisor: Hello on the control socket when the loop starts and every HELLO_S; on the token stream:
                        TokenPiece per token, JobDone with each request's JobResult, EngineBeat every BEAT_S (a
                        turn's messages in one zmq message, a frame each)
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any

import zmq

from llmsup.engines import runtime
from llmsup.engines.gpu_memory import gpu_memory_mb
from llmsup.engines.messages import (
    CONTROL_OPS,
    Abort,
    EngineBeat,
    Hello,
    JobDone,
    JobResult,
    Message,
    ProtocolError,
    Stop,
    Submit,
    TokenPiece,
    decode_for_engine,
    encode,
)
from llmsup.engines.protocol import BatchBackend, StepOutput, TokenLogprob
from llmsup.engines.sigdefer import DeferredSigint
from llmsup.engines.stream import secure_client

log = logging.getLogger("llmsup.engine")
BEAT_S = 0.25
IDLE_POLL_MS = 20
HELLO_S = 1.0  # a hello again: where the supervisor sends this engine its requests (its connection now)
TEST_HOOK = re.compile(r"\[llmsup:(stall|stall-nosigint)(?:=([0-9.]+))?\]")


@dataclass
class Request:
    key: str
    deadline: float  # this process's monotonic clock
    pieces: list[str] = field(default_factory=list)
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    prompt_token_ids: tuple[int, ...] = ()
    pooled: tuple[float, ...] = ()
    pooled_shape: tuple[int, ...] = ()


class BatchServer:
    def __init__(self, config: dict[str, Any]) -> None:
        rt = runtime.current()
        if not isinstance(rt.backend, BatchBackend):
            raise TypeError(f"backend {rt.backend.name!r} cannot batch requests")
        self.backend: BatchBackend = rt.backend
        self.rt = rt
        self.test_hooks = bool(config.get("test_hooks"))
        self.ctl: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.ctl.setsockopt(zmq.LINGER, 0)
        if config.get("identity") is not None:  # a channel without keys names peers by it (tests of the wire)
            self.ctl.setsockopt(zmq.IDENTITY, str(config["identity"]).encode())  # with keys: the key names this engine
        secure_client(self.ctl, rt.stream.keys if rt.stream is not None else None)  # the token stream's keys
        self.ctl.connect(config["control_address"])
        self.requests: dict[str, Request] = {}
        self.kill: dict[str, str] = {}  # key -> reason
        self.stopping = False
        self.interrupts = 0
        self.done = 0
        self.malformed = 0  # control messages that could not be read
        self._malformed_seen: set[str] = set()  # kinds of problem already logged
        self._last_beat = 0.0
        self._last_hello = 0.0

    # messages out --------------------------------------------------------------------
    def _send(self, msg: Message) -> None:
        stream = self.rt.stream
        if stream is not None:
            stream.send(msg)

    def _finish(self, req: Request, result: JobResult) -> None:
        result = replace(result, text="".join(req.pieces), tokens=req.tokens, pid=os.getpid(),
                         rss_mb=round(runtime.rss_mb(), 1), gpu_mem_mb=gpu_memory_mb(self.rt.gpu),
                         jobs_done=self.done + 1, logprobs=tuple(req.logprobs), token_ids=tuple(req.token_ids),
                         prompt_logprobs=req.prompt_logprobs, prompt_token_ids=req.prompt_token_ids,
                         pooled=req.pooled, pooled_shape=req.pooled_shape)
        self._send(JobDone(req.key, result))
        self.requests.pop(req.key, None)
        self.kill.pop(req.key, None)
        self.done += 1

    # the loop ------------------------------------------------------------------------
    def serve(self) -> dict[str, Any]:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self._last_hello = time.monotonic()
        self.ctl.send(encode(Hello(os.getpid())))
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
        """One turn: new ops, due deadlines, a step of every request; what it sends goes in one message."""
        stream = self.rt.stream
        if stream is not None:
            stream.hold()
        try:
            self._turn_inner()
        finally:
            if stream is not None:
                stream.flush()

    def _turn_inner(self) -> None:
        timeout = 0 if self.requests else IDLE_POLL_MS
        if self.ctl.poll(timeout):
            self._drain()
        now = time.monotonic()
        self._settle_due(now, interrupted=False)
        if self.requests:
            with DeferredSigint():
                outputs = self.backend.step()
            self._apply(outputs)
        if now - self._last_hello >= HELLO_S:  # after a reconnect, the supervisor finds this engine on it by this
            self._last_hello = now
            try:
                self.ctl.send(encode(Hello(os.getpid())), zmq.NOBLOCK)
            except zmq.Again:  # not connected now: the next one
                pass
        if now - self._last_beat >= BEAT_S:
            self._last_beat = now
            self._send(EngineBeat(self.rt.engine_id, len(self.requests), self.done, round(runtime.rss_mb(), 1),
                                  self.malformed, gpu_memory_mb(self.rt.gpu)))

    def _drain(self) -> None:
        while True:
            try:
                frames = self.ctl.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            for frame in frames:  # a frame an op (the supervisor sends a turn's submits in one message)
                try:
                    op = decode_for_engine(frame, expect=CONTROL_OPS)
                except ProtocolError as exc:
                    self._reject(exc)
                    continue
                if isinstance(op, Submit):
                    self._submit(op)
                elif isinstance(op, Abort) and op.key in self.requests:
                    self.kill[op.key] = op.reason
                elif isinstance(op, Stop):
                    self.stopping = True

    def _reject(self, exc: ProtocolError) -> None:
        """Drop a control message this loop cannot read; log each kind of problem once."""
        self.malformed += 1
        if exc.problem not in self._malformed_seen:
            self._malformed_seen.add(exc.problem)
            log.warning("%s dropped an unreadable control message (%s; further ones of this kind are only "
                        "counted)", self.rt.tag(), exc)

    def _submit(self, op: Submit) -> None:
        if op.key in self.requests:  # a repeated key would orphan the request it replaces
            self._reject(ProtocolError("duplicate key", f"request {op.key!r} is already running"))
            return
        req = Request(op.key, time.monotonic() + op.deadline_s if op.deadline_s is not None else math.inf)
        self.requests[op.key] = req
        try:
            with DeferredSigint():
                self.backend.add_request(op.key, op.prompt, op.params)
        except Exception as exc:  # a bad request fails alone, as data (with the engine-side traceback)
            self._finish(req, JobResult("error", error=f"{type(exc).__name__}: {exc}",
                                        traceback=traceback.format_exc(limit=20)))
            return
        if self.test_hooks:
            self._test_hook(op.prompt)

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
            req.logprobs.extend(out.logprobs)
            req.token_ids.extend(out.token_ids)
            req.prompt_logprobs = out.prompt_logprobs or req.prompt_logprobs
            req.prompt_token_ids = out.prompt_token_ids or req.prompt_token_ids
            req.pooled, req.pooled_shape = out.pooled or req.pooled, out.pooled_shape or req.pooled_shape
            self._pieces(req, out)
            if out.finished:
                self._finish(req, JobResult("completed", finish_reason=out.finish_reason,
                                            prompt_tokens=out.prompt_tokens))

    def _pieces(self, req: Request, out: StepOutput) -> None:
        """One piece per new token, each with its id and logprob when the request asked for them (the step
        output carries them only then); the step's text goes with its last token. A step that made tokens but no
        text yet (the detokenizer holds an incomplete UTF-8 sequence back) still sends its pieces, empty: a client
        sees the request progress from its first token on, as with vLLM's own server (which streams one chunk per
        step, empty text included)."""
        count = max(out.new_tokens, 1 if out.text else 0)
        for i in range(count):
            token_id = out.token_ids[i] if i < len(out.token_ids) else None
            logprob = out.logprobs[i] if i < len(out.logprobs) else None
            text = out.text if i == count - 1 else ""
            self._send(TokenPiece(req.key, len(req.pieces), text, token_id, logprob))
            req.pieces.append(text)

    def _settle_due(self, now: float, interrupted: bool) -> None:
        for req in list(self.requests.values()):
            if req.key in self.kill:
                self._abort(req, self.kill[req.key], interrupted)
            elif now >= req.deadline:
                self._abort(req, "deadline", interrupted)

    def _abort(self, req: Request, reason: str, interrupted: bool = False) -> None:
        with DeferredSigint():
            self.backend.abort_requests([req.key])
        self._finish(req, JobResult("interrupted", reason=reason, via_sigint=interrupted))


def serve(config: dict[str, Any]) -> dict[str, Any]:
    """The long-lived serving task of a batched engine (returns after a "stop" message)."""
    return BatchServer(config).serve()
