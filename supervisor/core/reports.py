"""What drivers report to the supervisor core: typed events, one class each.

Drivers (the engine driver over the IPyParallel cluster, the token stream
reader, the control channel) never change job or engine state themselves: they
do what the core asks and report what happened here, through one sink
(``SupervisorCore.report``), which takes the time in and decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llmsup.engines.messages import JobResult
from llmsup.engines.protocol import TokenLogprob


@dataclass(frozen=True)
class EngineIdentity:
    """What an engine says about itself when it registers."""

    host: str
    host_key: str
    pid: int
    gpu: str
    engine_set: str = ""  # LLMSUP_ENGINE_SET of the process ("" if someone else started it)
    nanny_pid: int | None = None
    pid_started: float | None = None  # the process's start time (tells a reused pid apart)
    pool: str = ""  # the pool it was started for by someone else (a join agent's --pool; "": the first)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineIdentity:
        nanny = data.get("nanny_pid")
        return cls(host=str(data["host"]), host_key=str(data["host_key"]), pid=int(data["pid"]),
                   gpu=str(data.get("gpu") or ""), engine_set=str(data.get("engine_set") or ""),
                   nanny_pid=int(nanny) if nanny else None,
                   pid_started=float(data["pid_started"]) if data.get("pid_started") else None,
                   pool=str(data.get("pool") or ""))


# engines coming and going ------------------------------------------------------------
@dataclass(frozen=True)
class EngineRegistered:
    engine_id: int  # a new id in the controller's list


@dataclass(frozen=True)
class EngineUnregistered:
    engine_id: int  # gone from the controller's list (process died, or heartbeat lost)


@dataclass(frozen=True)
class EngineIdentified:
    engine_id: int
    identity: EngineIdentity


@dataclass(frozen=True)
class EngineLoaded:
    engine_id: int
    backend: dict[str, Any] = field(default_factory=dict)
    rss_mb: float = 0.0
    load_s: float = 0.0
    gpu_mem_mb: float | None = None  # GPU memory of the engine and its children (None: no GPU)
    log_file: str = ""  # the engine's own log file ("" when it has none)


@dataclass(frozen=True)
class EngineProgress:
    engine_id: int  # still starting: a phase of its start (download, load, warm-up) was reported
    phase: str
    detail: str = ""
    log_file: str = ""


@dataclass(frozen=True)
class EngineFailed:
    engine_id: int
    why: str  # initialisation failed, or its serving loop ended


@dataclass(frozen=True)
class EngineServing:
    engine_id: int  # a batched engine's serving loop said hello: it takes jobs


@dataclass(frozen=True)
class EngineBeat:
    engine_id: int
    rss_mb: float | None = None
    gpu_mem_mb: float | None = None


@dataclass(frozen=True)
class EngineKilled:
    engine_id: int  # SIGKILL sent to its process group (or through its nanny)


@dataclass(frozen=True)
class EngineRetired:
    engine_id: int  # its backend released (or its process gone): its devices are free for a replacement


@dataclass(frozen=True)
class ControllerLost:
    """The IPyParallel controller died: every engine is cut off from us (they are stopped and launched anew)."""


@dataclass(frozen=True)
class ControllerRestarted:
    """A new controller runs: engines can be launched again."""


@dataclass(frozen=True)
class HostHeard:
    """A host's join agent beat on the control channel (``llmsup join``)."""

    agent: str  # its identity on the control channel (orders go there)
    host: str
    host_key: str
    gpus: int
    engines: int  # serving engines it was asked for
    standby: int
    pids: tuple[int, ...]  # its engine processes now


@dataclass(frozen=True)
class LaunchFailed:
    set_id: str
    why: str


# one job on one engine -----------------------------------------------------------------
@dataclass(frozen=True)
class TaskStarted:
    key: str  # the engine runs the job now: a SIGINT reaches it (not the idle kernel)


@dataclass(frozen=True)
class TokenPiece:
    key: str
    seq: int  # the token's index within this dispatch
    text: str
    token_id: int | None = None  # when the job asked for token ids
    logprob: TokenLogprob | None = None  # when the job asked for logprobs


@dataclass(frozen=True)
class TaskFailure:
    """Why a job's task ended without a result, as data: the driver decodes its cluster's exceptions into this."""
    kind: Literal["interrupted", "engine_died", "raised", "unreachable"]
    # interrupted: SIGINT reached the task; engine_died: the engine process went away under it;
    # raised: the task raised (the engine's traceback kept for admins); unreachable: it never reached the engine
    message: str
    traceback: str | None = None


@dataclass(frozen=True)
class JobReply:
    key: str
    result: JobResult | None = None  # the engine's answer
    error: TaskFailure | None = None  # the task raised or never reached the engine
    dispatched: bool = True  # False: it never reached the engine (not an attempt)


@dataclass(frozen=True)
class SigintDelivered:
    key: str  # the SIGINT for this job reached the engine (at once on this host; the nanny's answer elsewhere)


@dataclass(frozen=True)
class ProbeAnswered:
    key: str  # the no-op probe sent behind this job came back


Report = (
    EngineRegistered | EngineUnregistered | EngineIdentified | EngineLoaded | EngineProgress | EngineFailed
    | EngineServing
    | EngineBeat | EngineKilled | EngineRetired | LaunchFailed | ControllerLost | ControllerRestarted | HostHeard
    | TaskStarted | TokenPiece | JobReply | SigintDelivered | ProbeAnswered
)
