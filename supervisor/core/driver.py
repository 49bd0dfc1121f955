"""The port between the supervisor core and the cluster: what the core asks engines to do.

Every method returns at once; what comes of it is reported back to the core as
a typed event (``supervisor/core/reports.py``). The real driver works on an
IPyParallel cluster (``supervisor/cluster/driver.py``); tests give the core a
fake that records what was asked and report events by hand, with a fake clock.
"""

from __future__ import annotations

from typing import Any, Protocol

from llmsup.engines.messages import JobSpec
from llmsup.supervisor.core.engine_state import Engine


class EngineDriver(Protocol):
    local_key: str  # the host_key of the supervisor's own host (never lost: it would be losing itself)

    @property
    def can_launch(self) -> bool:
        """True: a local cluster whose engines this supervisor starts and replaces."""

    def engine_ids(self) -> set[int]:
        """Engines registered with the controller now."""

    def is_local(self, engine: Engine) -> bool:
        """The engine runs on the supervisor's own host (its pid can be signalled and read here)."""

    def poll(self) -> None:
        """Notice what changed in the cluster since the last call (the health loop calls it each tick)."""

    def launch(self, gpu: str, host: str = "") -> str:
        """Start one engine on these devices (on ``host``, for launchers that start engines on named hosts; ""
        lets the driver choose); returns its engine set (LaunchFailed if it cannot start)."""

    def identify(self, engine_id: int) -> None:
        """Ask a newly registered engine who it is (EngineIdentified, or EngineFailed)."""

    def load(self, engine: Engine, config: dict[str, Any]) -> None:
        """Initialise the engine's backend (EngineLoaded, or EngineFailed)."""

    def start_serving(self, engine: Engine) -> None:
        """Start a batched engine's serving loop (EngineServing when it says hello, EngineFailed when it ends)."""

    def dispatch(self, engine: Engine, key: str, spec: JobSpec, deadline_s: float | None) -> None:
        """Run one job on exactly this engine (TaskStarted, TokenPiece..., then JobReply)."""

    def abort(self, engine: Engine, key: str) -> None:
        """Ask a batched engine to drop one request (its JobReply follows)."""

    def sigint(self, engine: Engine, key: str) -> None:
        """SIGINT to the engine's main thread (SigintDelivered once it has reached the engine)."""

    def probe(self, engine: Engine, key: str) -> None:
        """A no-op task behind the job (ProbeAnswered if it comes back)."""

    def kill(self, engine: Engine) -> None:
        """SIGKILL the engine's process group, or through its nanny when remote (EngineKilled)."""

    def order_host(self, agent: str, fence: tuple[int, ...] = (), stop: bool = False) -> None:
        """Tell a host's join agent to replace these engine processes (``fence``), or to stop every engine."""

    def revoke_host(self, host_key: str, agent: str, engine_ids: tuple[int, ...]) -> None:
        """An admin revoked the host: tell its agent to stop, revoke its and these engines' keys, and admit nothing
        of that host again."""

    def retire(self, engine: Engine, release: bool) -> None:
        """Take a gone engine's process away: release its backend first if asked, stop its engine set
        (EngineRetired once its devices are free for a replacement)."""

    async def stop(self, engines: list[Engine], busy: set[int]) -> None:
        """Release idle engines, kill busy ones, stop them all."""


class NotStarted:
    """The driver of a core whose shell has not started the cluster yet: it launches nothing, and any request
    to an engine is an error (there is none)."""

    can_launch = False
    local_key = ""

    def engine_ids(self) -> set[int]:
        return set()

    def is_local(self, engine: Engine) -> bool:
        return False

    def poll(self) -> None:
        return None

    def launch(self, gpu: str, host: str = "") -> str:
        raise RuntimeError("supervisor not started: no cluster to launch an engine on")

    def identify(self, engine_id: int) -> None:
        self._refuse()

    def load(self, engine: Engine, config: dict[str, Any]) -> None:
        self._refuse()

    def start_serving(self, engine: Engine) -> None:
        self._refuse()

    def dispatch(self, engine: Engine, key: str, spec: JobSpec, deadline_s: float | None) -> None:
        self._refuse()

    def abort(self, engine: Engine, key: str) -> None:
        self._refuse()

    def sigint(self, engine: Engine, key: str) -> None:
        self._refuse()

    def probe(self, engine: Engine, key: str) -> None:
        self._refuse()

    def kill(self, engine: Engine) -> None:
        self._refuse()

    def order_host(self, agent: str, fence: tuple[int, ...] = (), stop: bool = False) -> None:
        self._refuse()

    def revoke_host(self, host_key: str, agent: str, engine_ids: tuple[int, ...]) -> None:
        self._refuse()

    def retire(self, engine: Engine, release: bool) -> None:
        self._refuse()

    async def stop(self, engines: list[Engine], busy: set[int]) -> None:
        return None

    @staticmethod
    def _refuse() -> None:
        raise RuntimeError("supervisor not started: no cluster to drive")
