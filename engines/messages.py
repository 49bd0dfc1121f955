"""Wire messages between the supervisor and its engines: typed, versioned, plain data on the wire.

Every message is a frozen dataclass with a ``version`` field (:data:`PROTOCOL_VERSION`). On the wire a
message is a JSON object ``{"version": 1, "kind": "<KIND>", <its fields>}``: :func:`encode` gives the bytes
sent on a zmq socket, :func:`plain` the dict handed to (and returned from) an IPyParallel task. No class is
ever pickled across: an engine may run another llmsup build. Decoding checks the version, the kind, and the
type of every field, and raises :class:`ProtocolError` for anything else (unknown fields are ignored).

Channels and who speaks on them:

- ``run_job`` (IPyParallel apply on one engine): :class:`JobSpec` in, :class:`JobResult` back;
- control (supervisor ROUTER -> batched engine DEALER): :class:`Submit`, :class:`Abort`, :class:`Stop`;
  back on it only :class:`Hello`, when the engine's serving loop starts;
- token stream (engine PUSH -> supervisor PULL): :class:`TaskStarted`, :class:`TokenPiece`, :class:`JobDone`,
  :class:`EngineBeat`;
- a host's join agent (DEALER) on the control channel: :class:`HostBeat` in, :class:`HostOrder` out (the first
  beats, under the join file's key, carry the agent's own public key: ``enrolled`` answers that it is admitted).

Each direction has one decoder: :func:`decode_for_engine` and :func:`decode_for_supervisor`.
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from functools import cache
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints, overload

from llmsup.engines.protocol import GenParams, TokenLogprob

PROTOCOL_VERSION = 1
Outcome = Literal["completed", "interrupted", "error"]


class ProtocolError(ValueError):
    """A message this build cannot read. ``problem`` is a short category (for counting and logging once)."""

    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem = problem


# supervisor -> engine ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSpec:
    """One job for :func:`engines.runtime.run_job` (an unbatched engine)."""

    KIND: ClassVar[str] = "job"
    key: str  # stream key: job id and attempt
    prompt: str
    params: GenParams = field(default_factory=GenParams)
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Submit:
    """A request for a batched engine's serving loop; it ends on its own at ``deadline_s`` (None: it has none)."""

    KIND: ClassVar[str] = "submit"
    key: str
    prompt: str
    deadline_s: float | None
    params: GenParams = field(default_factory=GenParams)
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Abort:
    KIND: ClassVar[str] = "abort"
    key: str
    reason: str = "cancelled"
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Stop:
    """Ask a serving loop to answer every request it holds (``interrupted``, reason ``stopped``) and return."""

    KIND: ClassVar[str] = "stop"
    version: int = PROTOCOL_VERSION


# engine -> supervisor ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobResult:
    """How a job ended on its engine; interrupts and errors are results too, never a broken engine."""

    KIND: ClassVar[str] = "result"
    outcome: Outcome
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    prompt_tokens: int = 0
    reason: str | None = None  # why an interrupted batched request ended: deadline | cancelled | stopped
    via_sigint: bool = False
    error: str | None = None  # "ExcType: message"
    traceback: str | None = None  # the engine-side traceback of an error
    transient: bool = False  # worth retrying
    engine_dead: bool = False  # the backend is unusable: replace the engine
    pid: int = 0
    rss_mb: float = 0.0
    gpu_mem_mb: float | None = None  # GPU memory of the engine and its children (engines on a GPU)
    elapsed_s: float = 0.0
    jobs_done: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()  # per generated token, when the job asked for them
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # prompt tokens after the first, when asked
    token_ids: tuple[int, ...] = ()  # generated token ids, when asked
    prompt_token_ids: tuple[int, ...] = ()  # when asked
    pooled: tuple[float, ...] = ()  # a pooling request's output, flattened
    pooled_shape: tuple[int, ...] = ()
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Hello:
    """A batched engine's serving loop is up (control channel; the engine's own key names it). Said again every
    second: after a reconnect, the supervisor learns the engine's new connection from it."""

    KIND: ClassVar[str] = "hello"
    pid: int
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class TaskStarted:
    """The engine began running the job: from now on a SIGINT reaches the job, not the idle kernel."""

    KIND: ClassVar[str] = "start"
    key: str
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class TokenPiece:
    """The ``seq``-th token of a job: its text (may be empty: a token not decodable yet), and its id and logprob
    record when the request asked for them. Those two are left out of the frame when None (:data:`SPARSE`)."""

    KIND: ClassVar[str] = "piece"
    SPARSE: ClassVar[tuple[str, ...]] = ("token_id", "logprob")
    key: str
    seq: int
    text: str
    token_id: int | None = None
    logprob: TokenLogprob | None = None
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class JobDone:
    """A batched request ended: its result travels on the token stream."""

    KIND: ClassVar[str] = "done"
    key: str
    result: JobResult
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class EngineBeat:
    """An engine is alive (every few hundred ms): a batched engine's serving loop, or a one-job engine's
    heartbeat thread (``engines/heartbeat.py``)."""

    KIND: ClassVar[str] = "beat"
    engine_id: int
    active: int = 0
    done: int = 0
    rss_mb: float = 0.0
    malformed: int = 0  # control messages the loop could not read so far
    gpu_mem_mb: float | None = None
    version: int = PROTOCOL_VERSION


# a host's join agent (``llmsup join``) <-> supervisor, on the control channel ----------------------------------
@dataclass(frozen=True)
class HostBeat:
    """A join agent's hello and heartbeat: who the host is and the engine processes it keeps alive."""

    KIND: ClassVar[str] = "host-beat"
    host: str
    host_key: str
    gpus: int
    engines: int  # serving engines the agent was asked for
    standby: int = 0  # standbys it keeps besides
    pids: tuple[int, ...] = ()  # its engine processes now (pids as that host numbers them)
    agent_key: str = ""  # the agent's own CURVE public key (Z85): under the join file's key, a request to admit it
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class HostOrder:
    """To a join agent: kill these engine processes and start new ones in their place (``fence``: they were taken
    out while the host was cut off), or stop every engine and exit (``stop``: the server stops, or revoked this
    host); ``enrolled``: the agent's own key is admitted, reconnect with it."""

    KIND: ClassVar[str] = "host-order"
    fence: tuple[int, ...] = ()
    stop: bool = False
    enrolled: bool = False
    version: int = PROTOCOL_VERSION


ControlOp = Submit | Abort | Stop
EngineBound = JobSpec | ControlOp | HostOrder
StreamEvent = TaskStarted | TokenPiece | JobDone | EngineBeat
SupervisorBound = JobResult | Hello | HostBeat | StreamEvent
Message = EngineBound | SupervisorBound
CONTROL_OPS: tuple[type[ControlOp], ...] = (Submit, Abort, Stop)
STREAM_EVENTS: tuple[type[StreamEvent], ...] = (TaskStarted, TokenPiece, JobDone, EngineBeat)
_ENGINE_BOUND = {cls.KIND: cls for cls in (JobSpec, *CONTROL_OPS, HostOrder)}
_SUPERVISOR_BOUND = {cls.KIND: cls for cls in (JobResult, Hello, HostBeat, *STREAM_EVENTS)}
M = TypeVar("M")
R = TypeVar("R")


def _per_class(fn: Callable[[type], R]) -> Callable[[type], R]:
    """``functools.cache`` for a function of a class (typed to take any class: a type checker reads a class
    object as unhashable when it checks it against ``cache``'s ``Hashable`` arguments)."""
    return cache(fn)


# encoding ------------------------------------------------------------------------------------------------
_SCALARS = (str, int, float, bool, type(None))


def _plain_value(value: Any) -> Any:
    if type(value) in _SCALARS:
        return value
    if isinstance(value, tuple | list):
        return [_plain_value(v) for v in value]
    return {name: _plain_value(getattr(value, name)) for name in _names(type(value))}  # a record


def plain(msg: Message) -> dict[str, Any]:
    """The message as plain data (JSON types only), tagged with its kind. A field named in the class's ``SPARSE``
    is left out when None (the decoder then takes its default, None)."""
    cls = type(msg)
    if _flat(cls):  # the token pieces' fast path: the instance dict is the plain form
        data = dict(vars(msg))
        for name in _sparse(cls):
            value = data.pop(name)
            if value is not None:
                data[name] = _plain_value(value)
    else:
        data = _plain_value(msg)
    data["kind"] = msg.KIND
    return data


_JSON = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps with options builds one per call


def encode(msg: Message) -> bytes:
    """The message as one JSON frame."""
    return _JSON.encode(plain(msg)).encode()


# decoding ------------------------------------------------------------------------------------------------
@overload
def decode_for_engine(data: object) -> JobSpec | ControlOp: ...
@overload
def decode_for_engine(data: object, expect: tuple[type[M], ...]) -> M: ...
def decode_for_engine(data: object, expect: tuple[type[object], ...] = (JobSpec, *CONTROL_OPS)) -> object:
    """Read a supervisor -> engine message (bytes or plain dict) of one of the ``expect`` types."""
    return _decode(data, _ENGINE_BOUND, expect)


@overload
def decode_for_supervisor(data: object) -> JobResult | Hello | StreamEvent: ...
@overload
def decode_for_supervisor(data: object, expect: tuple[type[M], ...]) -> M: ...
def decode_for_supervisor(data: object, expect: tuple[type[object], ...] = (JobResult, Hello, *STREAM_EVENTS)) -> object:
    """Read an engine -> supervisor message (bytes or plain dict) of one of the ``expect`` types."""
    return _decode(data, _SUPERVISOR_BOUND, expect)


def _decode(data: object, known: dict[str, type], expect: tuple[type[M], ...]) -> M:
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            data = json.loads(bytes(data))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise ProtocolError("not json", str(exc)[:200]) from None
    if not isinstance(data, dict):
        raise ProtocolError("not an object", f"a message is a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    cls = known.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError("unknown kind", f"kind {str(kind)[:40]!r}")
    if cls not in expect:
        raise ProtocolError("unexpected kind", f"{kind!r} is not expected here")
    return _build(cls, data)


Checker = Callable[[Any, str], Any]


def logprobs_from_plain(data: object) -> tuple[TokenLogprob, ...]:
    """Per-token logprobs (a job record's, as stored) back as records; raises ProtocolError if malformed."""
    logprobs: tuple[TokenLogprob, ...] = _checker(tuple[TokenLogprob, ...])(data, "logprobs")  # checked: that type
    return logprobs


@_per_class
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


@_per_class
def _sparse(cls: type) -> tuple[str, ...]:
    """Optional fields left out of the plain form when None."""
    sparse: tuple[str, ...] = getattr(cls, "SPARSE", ())
    return sparse


@_per_class
def _flat(cls: type) -> bool:
    """Every field but the sparse ones is a JSON scalar (its instance dict, less those, is its plain form)."""
    hints = get_type_hints(cls)
    return all(hints[f.name] in (str, int, float, bool) for f in fields(cls) if f.name not in _sparse(cls))


@_per_class
def _schema(cls: type) -> tuple[tuple[str, Checker, bool], ...]:
    """(name, checker, required) of each field but ``version``, built once per class."""
    hints = get_type_hints(cls)
    return tuple((f.name, _checker(hints[f.name]), f.default is MISSING and f.default_factory is MISSING)
                 for f in fields(cls) if f.name != "version")


def _build(cls: type[M], data: dict[str, Any]) -> M:
    if "version" in _names(cls):
        version = data.get("version")
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise ProtocolError("version", f"{cls.__name__} of version {str(version)[:20]}, this build speaks "
                                           f"{PROTOCOL_VERSION}")
    values: dict[str, Any] = {}
    for name, check, required in _schema(cls):
        if name in data:
            values[name] = check(data[name], f"{cls.__name__}.{name}")
        elif required:
            raise ProtocolError("missing field", f"{cls.__name__}.{name}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ProtocolError("bad field", f"{cls.__name__}: {exc}") from None


def _bad(value: Any, hint: Any, where: str) -> ProtocolError:
    return ProtocolError("bad field", f"{where} is {type(value).__name__} {str(value)[:40]!r}, not {hint}")


def _checker(hint: Any) -> Checker:  # noqa: C901 - one branch per field type a message may carry (the wire contract)
    """A function that returns a JSON value as the type ``hint`` names, or raises ProtocolError."""
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        options = [_checker(arg) for arg in get_args(hint) if arg is not type(None)]
        nullable = type(None) in get_args(hint)

        def union(value: Any, where: str) -> Any:
            if value is None and nullable:
                return None
            for option in options:
                try:
                    return option(value, where)
                except ProtocolError:
                    continue
            raise _bad(value, hint, where)

        return union
    if origin is tuple:
        item = _checker(get_args(hint)[0])

        def sequence(value: Any, where: str) -> Any:
            if not isinstance(value, list | tuple):
                raise _bad(value, hint, where)
            return tuple(item(v, where) for v in value)

        return sequence
    if isinstance(hint, type) and is_dataclass(hint):
        def record(value: Any, where: str) -> Any:
            if not isinstance(value, dict):
                raise _bad(value, hint, where)
            return _build(hint, value)

        return record
    accept: Callable[[Any], bool]
    if origin is Literal:
        allowed = get_args(hint)
        accept = lambda v: isinstance(v, str) and v in allowed  # noqa: E731
    elif hint is float:
        accept = lambda v: type(v) in (int, float) and math.isfinite(v)  # noqa: E731
    elif hint in (int, str, bool):
        accept = lambda v: type(v) is hint  # noqa: E731
    else:
        raise TypeError(f"no wire form for {hint!r}")

    def scalar(value: Any, where: str) -> Any:
        if not accept(value):
            raise _bad(value, hint, where)
        return float(value) if hint is float else value

    return scalar
